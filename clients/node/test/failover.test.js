'use strict';
// Following a cluster's active node: a passive node answers UNAVAILABLE naming the active node's
// address (trailer ostinato-active-address), and the client goes there.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const grpc = require('@grpc/grpc-js');
const { ACTIVE_ADDRESS_KEY, ClusterTarget, errorDetails, proto, tlsCredentials } = require('../src/client');
const { startTopology } = require('../support/topology');

let topology;

before(async () => {
  topology = await startTopology({ config: '[controller]\nlisten = "127.0.0.1:0"\ncluster = "witness"' });
});

after(async () => {
  assert.equal(await topology?.stop(), 0);
});

test('a call to the passive controller node follows NotActive to the active one', async () => {
  // Controllers take calls from JOC's certificate only: this client shows it.
  const credentials = tlsCredentials({ dir: topology.tlsDir, name: 'joc' });
  const Controller = proto.ostinato.controller.v1.ControllerService;
  const Cluster = proto.ostinato.common.v1.ClusterService;
  const nodes = ['controller-a', 'controller-b'].map((n) => topology.services[n].address);

  const status = await new ClusterTarget(nodes, credentials, { serviceClass: Cluster }).call('GetClusterStatus', {});
  const active = status.status.nodes.find((n) => n.role === 'NODE_ROLE_ACTIVE').address;
  const passive = nodes.find((a) => a !== active);

  const direct = new Controller(passive, credentials);
  const refusal = await new Promise((resolve) => direct.GetOverview({}, (error) => resolve(error)));
  direct.close();
  assert.equal(refusal.code, grpc.status.UNAVAILABLE);
  assert.deepEqual(refusal.metadata.get(ACTIVE_ADDRESS_KEY), [active]);
  assert.equal(errorDetails(refusal).reason, 'NOT_ACTIVE');
  assert.equal(errorDetails(refusal).metadata.active_address, active);

  const target = new ClusterTarget([passive, active], credentials, { serviceClass: Controller });
  const overview = await target.call('GetOverview', {});
  assert.equal(target.address, active);
  assert.ok(overview, 'the active node answered');
  target.close();
});
