// Starts Swagger UI on /docs (stylefleet/router/api/docs.py). A file rather than an inline
// script, so the Content-Security-Policy needs no 'unsafe-inline'.
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapi,
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // Swagger UI's default asks a public validator for a badge
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
});
