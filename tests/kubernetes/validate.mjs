// Validates Kubernetes manifests against the API's schemas, with kubernetes-models (generated from
// the Kubernetes OpenAPI specification): types, required fields, enums and formats of every field
// of each document. Usage: node validate.mjs FILE.yaml...
// Prints one line per document ("ok FILE#N Kind/name" or "invalid ..."), exits 1 if any is invalid.
// Unknown fields are not caught by the OpenAPI schemas; test_kubernetes.py checks the fields valve
// relies on by name.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import * as apps from "kubernetes-models/apps/v1";
import * as autoscaling from "kubernetes-models/autoscaling/v2";
import * as core from "kubernetes-models/v1";
import * as networking from "kubernetes-models/networking.k8s.io/v1";

const kinds = {
  "apps/v1": apps,
  "autoscaling/v2": autoscaling,
  "v1": core,
  "networking.k8s.io/v1": networking,
};

let failed = false;
for (const file of process.argv.slice(2)) {
  const documents = parseAllDocuments(readFileSync(file, "utf8"));
  documents.forEach((doc, i) => {
    const where = `${file}#${i + 1}`;
    if (doc.errors.length > 0) {
      console.log(`invalid ${where}: YAML: ${doc.errors[0].message}`);
      failed = true;
      return;
    }
    const object = doc.toJS();
    const Model = kinds[object?.apiVersion]?.[object?.kind];
    if (!Model) {
      console.log(`invalid ${where}: unknown apiVersion/kind ${object?.apiVersion} ${object?.kind}`);
      failed = true;
      return;
    }
    try {
      new Model(object).validate();
      console.log(`ok ${where} ${object.kind}/${object.metadata?.name}`);
    } catch (error) {
      console.log(`invalid ${where} ${object.kind}/${object.metadata?.name}: ${error.message}`);
      failed = true;
    }
  });
  if (documents.length === 0) {
    console.log(`invalid ${file}: no YAML document`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
