'use strict';
// The Node.js client against a real topology (ostinato up: JOC, controller, director, subagent).

const assert = require('node:assert/strict');
const { after, before, describe, test } = require('node:test');
const grpc = require('@grpc/grpc-js');
const { OstinatoClient, errorDetails } = require('../src/client');
const { startTopology } = require('../support/topology');

const shellJob = (script, env = {}) => ({ agent: 'agent-1', executable: { shellScript: { script, env } } });

describe('a client of JOC with mutual TLS', () => {
  let topology;
  let client;

  before(async () => {
    topology = await startTopology();
    client = new OstinatoClient({ joc: topology.joc, tls: { dir: topology.tlsDir } });
  });

  after(async () => {
    client?.close();
    assert.equal(await topology?.stop(), 0);
  });

  test('deploys, adds an order, follows its events and its log to the end', async () => {
    const rows = await client.deploy('/node/greet', {
      orderPreparation: { parameters: { name: { type: 'PARAMETER_TYPE_STRING' } } },
      instructions: [{ execute: { jobName: 'greet' } }],
      jobs: { greet: shellJob('echo "hello, $NAME"; echo "to stderr" >&2', { NAME: '$name' }) },
    });
    assert.deepEqual(rows.map((r) => r.status), ['DEPLOYMENT_STATUS_DEPLOYED']);

    const added = await client.addOrder('/node/greet', { args: { name: 'node' } });
    assert.equal(added.existed, false);
    const kinds = [];
    const order = await client.waitUntilEnded(added.order_id, (event) => kinds.push(event.kind));
    assert.equal(order.state, 'ORDER_STATE_FINISHED');
    assert.deepEqual(
      kinds.filter((k) => ['order_added', 'order_processing_started', 'order_processed', 'order_finished'].includes(k)),
      ['order_added', 'order_processing_started', 'order_processed', 'order_finished'],
    );

    let stdout = '';
    let stderr = '';
    for await (const piece of client.orderLog(added.order_id)) {
      if (piece.stream === 'STD_STREAM_STDOUT') stdout += piece.chunk;
      else stderr += piece.chunk;
    }
    assert.equal(stdout, 'hello, node\n');
    assert.equal(stderr, 'to stderr\n');

    const again = await client.addOrder('/node/greet', { args: { name: 'node' }, orderId: added.order_id });
    assert.equal(again.existed, true, 'the same order id adds nothing twice');
  });

  test('answers a prompt', async () => {
    await client.deploy('/node/prompted', {
      instructions: [{ prompt: { question: "'go on?'" } }, { execute: { jobName: 'after' } }],
      jobs: { after: shellJob('echo answered') },
    });
    const { order_id: id } = await client.addOrder('/node/prompted');
    let prompted = false;
    for await (const { event } of client.watchOrder(id)) {
      if (event.kind === 'order_prompted') {
        prompted = true;
        break;
      }
    }
    assert.ok(prompted, 'the order waits at the prompt');
    await client.answer(id);
    assert.equal((await client.waitUntilEnded(id)).state, 'ORDER_STATE_FINISHED');
  });

  test('errors carry google.rpc details: a reason code and the offending field', async () => {
    await assert.rejects(client.addOrder('/node/no-such-workflow'), (error) => {
      assert.equal(error.code, grpc.status.NOT_FOUND);
      const details = errorDetails(error);
      assert.equal(details.reason, 'NOT_FOUND');
      assert.equal(details.domain, 'ostinato');
      return true;
    });
    await assert.rejects(
      client.deploy('/node/broken', { instructions: [{ execute: { jobName: 'missing' } }] }),
      (error) => {
        assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
        const details = errorDetails(error);
        assert.equal(details.reason, 'INVALID_ARGUMENT');
        assert.deepEqual(details.fieldViolations.map((v) => v.field), ['instructions[0].execute.jobName']);
        return true;
      },
    );
  });

  test('refuses to talk without a certificate of the CA', async () => {
    const stranger = new OstinatoClient({ joc: topology.joc, insecure: true });
    await assert.rejects(stranger.getOrder('any'), (error) => error.code === grpc.status.UNAVAILABLE);
    stranger.close();
  });
});
