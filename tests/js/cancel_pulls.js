// A grpc-js client that starts GetItemEmbeddings pulls and cancels each one as soon as its
// first message arrives, as browser and Node trainers' dashboards do.
// Prints {status code: calls}. Usage: node cancel_pulls.js ADDRESS CATALOG ROUNDS PROTO_ROOT
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const [address, catalog, rounds, root] = process.argv.slice(2);
const definition = loader.loadSync('tfllmer/v1/embedding_service.proto', {includeDirs: [root]});
const {EmbeddingService} = grpc.loadPackageDefinition(definition).tfllmer.v1;
const client = new EmbeddingService(address, grpc.credentials.createInsecure());
const codes = {};

function pull(i) {
  return new Promise((resolve) => {
    const call = client.GetItemEmbeddings({catalog, max_chunk_bytes: 1 + (i % 3) * 50000});
    let cancelled = false;
    call.on('data', () => { if (!cancelled) { cancelled = true; call.cancel(); } });
    call.on('error', () => {});  // the status below tells how the call ended
    call.on('status', (s) => { codes[s.code] = (codes[s.code] || 0) + 1; resolve(); });
  });
}

(async () => {
  for (let i = 0; i < Number(rounds); i++) await pull(i);
  console.log(JSON.stringify(codes));
  client.close();
})();
