// A new user's first session with imagegen through the official TypeScript SDK, as a script:
//
//   node client.mjs <mcp url> <token> [width] [height]
//
// It connects over Streamable HTTP with a bearer header, lists the tools, calls list_models and
// generate_image (with progress and resetTimeoutOnProgress), makes two calls that must fail as
// tool errors (an unknown model, a width out of range) and tries a wrong token. The SDK checks
// every structuredContent against the tool's outputSchema (it caches the schemas at tools/list and
// throws when a result does not match). It prints one JSON object on stdout, for
// tests/outside/test_outside_typescript_client.py; a failure to connect exits 1 with the error.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token, width = "768", height = "512"] = process.argv.slice(2);
if (!url || !token) {
  console.error("usage: node client.mjs <mcp url> <token> [width] [height]");
  process.exit(2);
}

function connect(bearer) {
  const client = new Client({ name: "imagegen-outside-ts", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${bearer}` } },
  });
  return { client, transport };
}

function text(result) {
  return result.content.filter((c) => c.type === "text").map((c) => c.text).join("\n");
}

async function toolCall(client, name, args, options) {
  const result = await client.callTool({ name, arguments: args }, undefined, options);
  return {
    isError: result.isError === true,
    structuredContent: result.structuredContent ?? null,
    text: text(result),
    contentTypes: result.content.map((c) => c.type),
  };
}

const { client, transport } = connect(token);
await client.connect(transport);
const summary = {
  sdkProtocolVersion: transport.protocolVersion ?? null,
  server: client.getServerVersion(),
  capabilities: client.getServerCapabilities(),
  instructions: client.getInstructions() ?? null,
};

const { tools } = await client.listTools();
summary.tools = tools.map((t) => ({
  name: t.name,
  required: t.inputSchema.required ?? [],
  hasOutputSchema: t.outputSchema !== undefined,
}));

summary.listModels = await toolCall(client, "list_models", {});

const progress = [];
summary.generate = await toolCall(
  client,
  "generate_image",
  { prompt: "a lighthouse on a cliff, from the TypeScript SDK", width: Number(width), height: Number(height) },
  {
    onprogress: (p) => progress.push(p),
    resetTimeoutOnProgress: true,
    timeout: 60_000,
    maxTotalTimeout: 300_000,
  },
);
summary.generate.progress = progress;

summary.unknownModel = await toolCall(client, "generate_image", { prompt: "x", model: "no-such-model" });
summary.widthOutOfRange = await toolCall(client, "generate_image", { prompt: "x", width: 100 });
await client.close();

// A wrong token: the SDK throws on connect; the user should see the status and our message.
const wrong = connect("igk_not-a-real-token");
try {
  await wrong.client.connect(wrong.transport);
  summary.wrongToken = { connected: true };
  await wrong.client.close();
} catch (error) {
  summary.wrongToken = { connected: false, error: String(error?.message ?? error), code: error?.code ?? null };
}

process.stdout.write(JSON.stringify(summary, null, 2) + "\n");
