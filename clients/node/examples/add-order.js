#!/usr/bin/env node
'use strict';
// node examples/add-order.js WORKFLOW_PATH [NAME=VALUE ...]
// Adds an order through JOC, prints its events and job output until it ends, and exits 0 when it
// finished. JOC and certificates: $OSTINATO_JOC (default 127.0.0.1:4446) and $OSTINATO_TLS_DIR
// (default .ostinato/pki: ca.pem, cli.pem, cli.key). With OTEL_EXPORTER_OTLP_ENDPOINT set, the
// order's trace starts here and is exported over OTLP/gRPC (the standard OTEL_EXPORTER_OTLP_*
// variables: certificate, client key and certificate for TLS).

const otel = require('@opentelemetry/api');
const { OstinatoClient } = require('../src/client');

function startTracing() {
  if (!process.env.OTEL_EXPORTER_OTLP_ENDPOINT) return null;
  const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');
  const { W3CTraceContextPropagator } = require('@opentelemetry/core');
  const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
  const { resourceFromAttributes } = require('@opentelemetry/resources');
  const { BatchSpanProcessor, TracerProvider } = require('@opentelemetry/sdk-trace');
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': process.env.OTEL_SERVICE_NAME || 'ostinato-node-client' }),
    spanProcessors: [new BatchSpanProcessor({ exporter: new OTLPTraceExporter() })],
  });
  otel.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  otel.propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  otel.trace.setGlobalTracerProvider(provider);
  return provider;
}

async function main([workflowPath, ...pairs]) {
  if (!workflowPath) {
    console.error('usage: add-order.js WORKFLOW_PATH [NAME=VALUE ...]');
    return 2;
  }
  const args = Object.fromEntries(pairs.map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
  const provider = startTracing();
  const client = new OstinatoClient({
    joc: process.env.OSTINATO_JOC || '127.0.0.1:4446',
    tls: { dir: process.env.OSTINATO_TLS_DIR || '.ostinato/pki' },
  });
  try {
    const added = await client.addOrder(workflowPath, { args });
    console.log(`order ${added.order_id}`);
    const order = await client.waitUntilEnded(added.order_id, (event, after) =>
      console.log(`  ${event.kind || 'snapshot'} -> ${after.state}`),
    );
    for await (const piece of client.orderLog(added.order_id)) process.stdout.write(piece.chunk);
    console.log(order.state);
    return order.state === 'ORDER_STATE_FINISHED' ? 0 : 1;
  } finally {
    client.close();
    await provider?.shutdown(); // exports what is left
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(`add-order: ${error.details || error.message}`);
    process.exit(1);
  },
);
