'use strict';
// A Node.js client of ostinato: loads the contracts (protos/) at run time with @grpc/proto-loader,
// speaks mutual TLS, follows a cluster's active node, and joins the caller's OpenTelemetry trace.

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const otel = require('@opentelemetry/api');

const PROTOS = path.resolve(__dirname, '..', '..', '..', 'protos');
// A passive node's UNAVAILABLE answer names the active node's gRPC address in this trailer.
const ACTIVE_ADDRESS_KEY = 'ostinato-active-address';
const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
const END_STATES = new Set(['ORDER_STATE_FINISHED', 'ORDER_STATE_CANCELLED']);
const tracer = otel.trace.getTracer('@ostinato/client');

function loadPackage(protosDir = PROTOS) {
  const definition = protoLoader.loadSync(
    ['ostinato/joc/v1/joc.proto', 'ostinato/controller/v1/controller.proto'],
    {
      includeDirs: [protosDir],
      // Field names as in the .proto files, 64-bit ids as strings (event ids exceed 2^53 in time),
      // enums by name, and the name of the set member of each oneof.
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    },
  );
  return grpc.loadPackageDefinition(definition);
}

const proto = loadPackage();

/** Credentials from PEM files: { ca, cert, key }, or a directory holding ca.pem, NAME.pem, NAME.key. */
function tlsCredentials({ dir, name = 'cli', ca, cert, key } = {}) {
  const file = (given, fallback) => fs.readFileSync(given || path.join(dir, fallback));
  return grpc.credentials.createSsl(file(ca, 'ca.pem'), file(key, `${name}.key`), file(cert, `${name}.pem`));
}

const details = new protobuf.Root();
details.resolvePath = (_origin, target) =>
  target.startsWith('google/protobuf/') ? target : path.join(__dirname, '..', 'protos', target);
details.loadSync('google/rpc/details.proto', { keepCase: true });

/**
 * The google.rpc details of an ostinato error, or null: { reason (ErrorInfo, e.g. NOT_FOUND,
 * NOT_ACTIVE, INVALID_ARGUMENT), domain, metadata, fieldViolations: [{ field, description }] }.
 */
function errorDetails(error) {
  const values = error && error.metadata ? error.metadata.get(STATUS_DETAILS_KEY) : [];
  if (!values.length) return null;
  const status = details.lookupType('google.rpc.Status').decode(values[0]);
  const result = { code: status.code, message: status.message, reason: '', domain: '', metadata: {}, fieldViolations: [] };
  for (const any of status.details) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    if (typeName === 'google.rpc.ErrorInfo') {
      const info = details.lookupType(typeName).decode(any.value);
      Object.assign(result, { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } });
    } else if (typeName === 'google.rpc.BadRequest') {
      const bad = details.lookupType(typeName).decode(any.value);
      result.fieldViolations.push(...bad.field_violations.map((v) => ({ field: v.field, description: v.description })));
    }
  }
  return result;
}

/**
 * The nodes of one service (JOC, or a controller or director cluster), dialled one at a time. A
 * call that fails with UNAVAILABLE (a passive node, naming the active one, or a node that is down)
 * or DEADLINE_EXCEEDED is tried again at the named active node, else at the next node.
 */
class ClusterTarget {
  constructor(addresses, credentials, { serviceClass, options = {} } = {}) {
    if (!addresses.length) throw new Error('a cluster needs at least one address');
    this.addresses = [...addresses];
    this.address = this.addresses[0];
    this.credentials = credentials;
    this.serviceClass = serviceClass;
    this.options = { 'grpc.keepalive_time_ms': 2000, 'grpc.keepalive_timeout_ms': 1000, ...options };
    this.clients = new Map();
  }

  client(serviceClass = this.serviceClass) {
    const key = `${this.address}|${serviceClass.serviceName}`;
    if (!this.clients.has(key)) {
      this.clients.set(key, new serviceClass(this.address, this.credentials, this.options));
    }
    return this.clients.get(key);
  }

  /** After an error of the node at `address`: the node to try next, or null. */
  follow(error, address) {
    if (address !== this.address) return this.address; // another call moved on already
    const active = error.metadata ? String(error.metadata.get(ACTIVE_ADDRESS_KEY)[0] || '') : '';
    let next = null;
    if (active) next = active;
    else if (error.code === grpc.status.UNAVAILABLE || error.code === grpc.status.DEADLINE_EXCEEDED) {
      next = this.addresses[(this.addresses.indexOf(this.address) + 1) % this.addresses.length];
    }
    if (!next || next === this.address) return null;
    this.address = next;
    return next;
  }

  /** A unary call at the active node; `timeoutMs` bounds all tries together. Idempotent calls only. */
  async call(method, request, { serviceClass, timeoutMs = 30000, metadata } = {}) {
    const deadline = Date.now() + timeoutMs;
    const tried = new Set();
    let pause = 100;
    for (;;) {
      const address = this.address;
      if (tried.has(address)) {
        await sleep(Math.min(pause, Math.max(deadline - Date.now(), 0)));
        pause = Math.min(pause * 2, 1000);
      }
      tried.add(address);
      try {
        return await unary(this.client(serviceClass), method, request, metadata, deadline);
      } catch (error) {
        if (Date.now() >= deadline || ![grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED].includes(error.code)) {
          throw error;
        }
        if (this.follow(error, address) === null && !error.metadata?.get(ACTIVE_ADDRESS_KEY).length) throw error;
      }
    }
  }

  close() {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }
}

function unary(client, method, request, metadata, deadline) {
  return new Promise((resolve, reject) => {
    client[method](request, withTrace(metadata), { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** gRPC metadata carrying the active OpenTelemetry context (W3C traceparent), when there is one. */
function withTrace(metadata) {
  const result = metadata ? metadata.clone() : new grpc.Metadata();
  otel.propagation.inject(otel.context.active(), result, {
    set: (carrier, key, value) => carrier.set(key, value),
  });
  return result;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** An async iterator over a server stream; cancelling the loop cancels the call. */
async function* streamOf(call) {
  try {
    for await (const item of call) yield item;
  } finally {
    call.cancel();
  }
}

/** JOC's client: inventory, deployment, orders, their events and logs, prompts. */
class OstinatoClient {
  /**
   * joc: "HOST:PORT" or a list of JOC instances' addresses; tls: { dir, name } or { ca, cert, key }
   * (mutual TLS, the default), or insecure: true for plain text; token: an account's token.
   */
  constructor({ joc, tls, insecure = false, token } = {}) {
    const credentials = insecure ? grpc.credentials.createInsecure() : tlsCredentials(tls);
    const v1 = proto.ostinato.joc.v1;
    this.services = v1;
    this.target = new ClusterTarget([].concat(joc), credentials, { serviceClass: v1.OrderService });
    this.metadata = new grpc.Metadata();
    if (token) this.metadata.set('authorization', `Bearer ${token}`);
  }

  call(service, method, request, timeoutMs) {
    return this.target.call(method, request, {
      serviceClass: this.services[service],
      timeoutMs,
      metadata: this.metadata,
    });
  }

  /** Puts an object (a workflow by default) into the inventory and deploys it; returns the deployment rows. */
  async deploy(objectPath, value, type = 'ITEM_TYPE_WORKFLOW') {
    const json = typeof value === 'string' ? value : JSON.stringify(value);
    await this.call('InventoryService', 'PutObject', { path: objectPath, type, json });
    const response = await this.call('DeploymentService', 'Deploy', { paths: [objectPath] });
    return response.deployments;
  }

  /**
   * Adds an order; arguments are plain values (strings, numbers, booleans). The order id is made
   * here unless given, so that a retry after a lost answer adds nothing twice. The call runs in a
   * client span: with a tracer provider registered, the order's whole life joins its trace.
   */
  async addOrder(workflowPath, { args = {}, orderId, controllerId = '' } = {}) {
    const id = orderId || `node-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    return tracer.startActiveSpan(
      'ostinato AddOrder',
      { kind: otel.SpanKind.CLIENT, attributes: { 'ostinato.order_id': id, 'ostinato.workflow': workflowPath } },
      async (span) => {
        try {
          const request = { workflow_path: workflowPath, arguments: toValues(args), order_id: id, controller_id: controllerId };
          return await this.call('OrderService', 'AddOrder', request);
        } catch (error) {
          span.recordException(error);
          span.setStatus({ code: otel.SpanStatusCode.ERROR, message: error.details });
          throw error;
        } finally {
          span.end();
        }
      },
    );
  }

  /** Answers the prompt an order waits at. */
  async answer(orderId) {
    const response = await this.call('OrderService', 'CommandOrders', {
      commands: [{ order_id: orderId, answer_prompt: {} }],
    });
    const result = response.results[0];
    if (result.error) throw new Error(`answer ${orderId}: ${result.error}`);
  }

  async getOrder(orderId) {
    return (await this.call('OrderService', 'GetOrder', { order_id: orderId })).summary.order;
  }

  /**
   * The order's events ({ event, order }) from its start until it ends; a stream broken by a
   * node that went away is opened again at the next node and continues after the last event seen.
   */
  async *watchOrder(orderId) {
    let lastId = 0n;
    for (;;) {
      const address = this.target.address;
      const call = this.target.client(this.services.OrderService).WatchOrder({ order_id: orderId }, withTrace(this.metadata));
      try {
        for await (const response of streamOf(call)) {
          const id = BigInt(response.event.id || 0);
          if (id !== 0n && id <= lastId) continue;
          if (id !== 0n) lastId = id;
          yield response;
        }
        return;
      } catch (error) {
        if (this.target.follow(error, address) === null) throw error;
      }
    }
  }

  /** Waits until the order ends; `onEvent` sees each event. Returns the order as it ended. */
  async waitUntilEnded(orderId, onEvent = () => {}) {
    let order = null;
    for await (const { event, order: after } of this.watchOrder(orderId)) {
      order = after;
      onEvent(event, after);
    }
    return order;
  }

  /** The order's job output, chunk by chunk ({ stream, chunk }); with follow, live until it ends. */
  async *orderLog(orderId, { follow = true } = {}) {
    const call = this.target.client(this.services.OrderService).GetOrderLog({ order_id: orderId, follow }, withTrace(this.metadata));
    yield* streamOf(call);
  }

  close() {
    this.target.close();
  }
}

function toValues(args) {
  const values = {};
  for (const [name, value] of Object.entries(args)) {
    if (typeof value === 'boolean') values[name] = { boolean: value };
    else if (typeof value === 'number' || typeof value === 'bigint') values[name] = { number: String(value) };
    else values[name] = { string: String(value) };
  }
  return values;
}

module.exports = {
  OstinatoClient,
  ClusterTarget,
  END_STATES,
  errorDetails,
  loadPackage,
  proto,
  tlsCredentials,
  ACTIVE_ADDRESS_KEY,
};
