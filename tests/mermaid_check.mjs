// Parses the Mermaid block of each Markdown file given with the real mermaid
// library (what GitHub and GitLab render with); prints "FILE ok" or "FILE FAIL why".
// Exit status: the number of failures. Run by tests/test_review.py.
import { JSDOM } from "jsdom";
import fs from "fs";

const dom = new JSDOM("<!DOCTYPE html><body></body>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
globalThis.DOMParser = dom.window.DOMParser;
globalThis.Element = dom.window.Element;
const { default: mermaid } = await import("mermaid");
mermaid.initialize({ startOnLoad: false });

let failures = 0;
for (const file of process.argv.slice(2)) {
  const block = fs.readFileSync(file, "utf8").match(/```mermaid\n([\s\S]*?)```/);
  try {
    if (!block) throw new Error("no mermaid block");
    await mermaid.parse(block[1]);
    console.log(file, "ok");
  } catch (e) {
    failures++;
    console.log(file, "FAIL", String(e.message || e).split("\n").join(" "));
  }
}
process.exit(failures);
