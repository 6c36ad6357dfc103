// A minimal Lambda Runtime API loop for index.mjs, standing in for the
// Node.js runtime's own (aws-lambda-ric builds aws-lambda-cpp and curl from
// source with cmake and autotools; this loop needs nothing). It does what
// the runtime does at a cold start: import the handler module (its top level
// builds the SDK clients), then ask for invocations, answer each, repeat.
// node:http rather than fetch, as loading fetch's implementation (undici)
// would add its own init time that the real runtime, written in C++, does
// not have.

import http from "node:http";
import path from "node:path";
import { pathToFileURL } from "node:url";

const api = process.env.AWS_LAMBDA_RUNTIME_API;
const [file, exported] = (process.env._HANDLER ?? "index.handler").split(".");
const root = process.env.LAMBDA_TASK_ROOT ?? process.cwd();
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(method, route, body) {
  const [host, port] = api.split(":");
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host, port, method, path: `/2018-06-01/runtime/${route}`, agent, headers: { "content-type": "application/json" } },
      (res) => {
        const chunks = [];
        res.on("data", (chunk) => chunks.push(chunk));
        res.on("end", () => resolve({ headers: res.headers, body: Buffer.concat(chunks).toString() }));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

const errorBody = (error) =>
  JSON.stringify({ errorType: error?.name ?? "Error", errorMessage: String(error?.message ?? error) });

let handler;
try {
  const module = await import(pathToFileURL(path.join(root, `${file}.mjs`)).href);
  handler = module[exported];
} catch (error) {
  await request("POST", "init/error", errorBody(error));
  process.exit(1);
}

for (;;) {
  const next = await request("GET", "invocation/next");
  const id = next.headers["lambda-runtime-aws-request-id"];
  try {
    const result = await handler(JSON.parse(next.body), { awsRequestId: id });
    await request("POST", `invocation/${id}/response`, JSON.stringify(result ?? null));
  } catch (error) {
    await request("POST", `invocation/${id}/error`, errorBody(error));
  }
}
