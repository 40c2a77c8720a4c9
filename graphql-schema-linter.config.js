// graphql-schema-linter over schema.graphql (`make lint`, so CI too). Pinned in
// package.json / package-lock.json, installed by the Makefile with `npm ci`.
//
// Every built-in rule of 3.0.1 runs except those declined below. The linter reads a list
// of rules to run, so a rule a newer version adds is off until it is listed here.
module.exports = {
  schemaPaths: ["schema.graphql"],
  rules: [
    "arguments-have-descriptions",
    "defined-types-are-used",
    "deprecations-have-a-reason",
    "descriptions-are-capitalized",
    "enum-values-all-caps",
    "enum-values-have-descriptions",
    "fields-are-camel-cased",
    "fields-have-descriptions",
    "input-object-values-are-camel-cased",
    "input-object-values-have-descriptions",
    "relay-connection-arguments-spec",
    "relay-connection-types-spec",
    "relay-page-info-spec",
    "types-are-capitalized",
    "types-have-descriptions",
    // Declined:
    // - "type-fields-sorted-alphabetically", "input-object-fields-sorted-alphabetically",
    //   "interface-fields-sorted-alphabetically": fields are ordered by meaning (the id
    //   first, then what a screen shows first, related objects last; an input's required
    //   fields before its optional ones), which GraphiQL and the docs show as written.
    // - "enum-values-sorted-alphabetically": enum values are in their natural order
    //   (roles strongest first, message statuses in the order a message goes through
    //   them, quality ratings from GREEN to RED), which alphabetical order would scramble.
  ],
};
