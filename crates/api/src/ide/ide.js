// Mounts GraphiQL on this server's /graphql. A file rather than an inline script, so the
// page's Content-Security-Policy can forbid inline scripts.
//
// The schema comes from GET /graphql/schema (SDL, built into a schema by the graphql-js that
// GraphiQL bundles) rather than from GraphiQL's introspection query: that query nests 15
// fields deep, beyond the depth limit every query to POST /graphql is held to.
"use strict";
(function () {
  const DEFAULT_QUERY = `# Bazaar's GraphQL API. The schema is in the Docs pane
# (and as SDL at /graphql/schema). Signed-in operations
# need {"Authorization": "Bearer <access token>"} under
# Headers, below.
query FirstProducts {
  products(first: 5) {
    edges {
      node { id name price variants { sku color size price stockLevel } }
    }
    pageInfo { hasNextPage endCursor }
  }
}
`;
  const fetcher = GraphiQL.createFetcher({
    url: new URL("/graphql", window.location.href).toString(),
  });

  function render(schema) {
    ReactDOM.createRoot(document.getElementById("graphiql")).render(
      React.createElement(GraphiQL, {
        fetcher,
        // undefined: GraphiQL falls back to introspecting, and says so if that fails.
        schema,
        defaultQuery: DEFAULT_QUERY,
        // Open on the schema: the first thing a newcomer needs to see.
        visiblePlugin: "Documentation Explorer",
        defaultEditorToolsVisibility: true,
        // Access tokens typed into the headers editor stay in this tab, not in localStorage.
        shouldPersistHeaders: false,
      }),
    );
  }

  fetch(new URL("/graphql/schema", window.location.href), { headers: { accept: "text/plain" } })
    .then((response) =>
      response.ok
        ? response.text()
        : Promise.reject(new Error(`GET /graphql/schema answered ${response.status}`)),
    )
    .then((sdl) => GraphiQL.GraphQL.buildSchema(sdl))
    .then(render, (error) => {
      console.error("could not load the schema", error);
      render(undefined);
    });
})();
