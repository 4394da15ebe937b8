"use strict";
// The lab's Cosmos DB for NoSQL data-plane backend: @vercel/cosmosdb-server (in memory, no auth) over plain HTTP on
// 127.0.0.1, on a port the system picks. Started by azurelab.cosmos.CosmosFront, which terminates TLS, checks every
// request's authorization and relays it here. Prints {"port": N} as its one line on stdout once it listens.
// It exits when its parent closes stdin (the parent stopping it, or dying without a chance to), so none outlives it.
const { createHttpServer } = require("@vercel/cosmosdb-server");

const [major] = process.versions.node.split(".").map(Number);
if (major < 20) {
  process.stderr.write(`@vercel/cosmosdb-server needs Node.js >= 20; this is ${process.version}\n`);
  process.exit(1);
}

const server = createHttpServer({ keepAlive: true });
// The front keeps one backend connection per client connection and closes it itself: no idle timeout here.
server.keepAliveTimeout = 0;
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});

process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
process.on("SIGTERM", () => process.exit(0));
