'use strict';
/**
 * Node.js client of the unified-profile ProfileService (`unified_profile.v1`).
 *
 * Loaded at run time from the same `.proto` files as the server (`../../protos`) with
 * `@grpc/proto-loader`, so there is no generated code to keep in step. Messages keep the proto's
 * field names (`profile_id`, `loyalty.points_balance`); int64 fields are JS numbers (exact up to
 * 2^53, far beyond any change-log sequence); enums are their names (`CHANGE_KIND_UPDATED`).
 *
 *   const { ProfileClient } = require('@unified-profile/client');
 *   const client = new ProfileClient('127.0.0.1:50051', { token: process.env.UP_TOKEN });
 *   const profile = await client.get('p_01HZX...');
 *   for await (const change of client.watch({ start: 'latest' })) console.log(change.sequence);
 *
 * Every failed call rejects with one error type, `ProfileServiceError` (`.code`: the status name,
 * `NOT_FOUND`; `.status`: its number; `.message`: the server's message).
 */

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_PROTO_DIR = path.resolve(__dirname, '..', '..', '..', 'protos');
const SERVICE_FILE = 'unified_profile/v1/profile_service.proto';

const LOADER_OPTIONS = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

// Status number -> name (`5` -> `NOT_FOUND`).
const STATUS_NAMES = Object.fromEntries(
  Object.entries(grpc.status).map(([name, number]) => [number, name]),
);

// A subscription resumed after these failures can go on; any other would fail the same way.
const RECONNECT_CODES = new Set([grpc.status.UNAVAILABLE, grpc.status.INTERNAL]);

const DEFAULT_RETRY = Object.freeze({
  maxAttempts: 4,
  initialBackoffMs: 100,
  maxBackoffMs: 5000,
  multiplier: 2,
  jitter: 0.2,
  maxReconnects: null,
});

/** A ProfileService call failed. */
class ProfileServiceError extends Error {
  /**
   * @param {number} status The gRPC status number.
   * @param {string} message The server's message (it names an invalid field, a missing scope).
   * @param {{cause?: unknown}} [options]
   */
  constructor(status, message, options) {
    const code = STATUS_NAMES[status] || 'UNKNOWN';
    super(message || code, options);
    this.name = 'ProfileServiceError';
    /** The status name (`NOT_FOUND`). */
    this.code = code;
    /** The status number (5). */
    this.status = status;
  }

  /** The error for a grpc-js error (its status and details). */
  static from(error) {
    if (error instanceof ProfileServiceError) return error;
    const status = typeof error.code === 'number' ? error.code : grpc.status.UNKNOWN;
    return new ProfileServiceError(status, error.details || error.message, { cause: error });
  }
}

/** The pauses of an exponential backoff with jitter, in milliseconds (endless). */
function* backoffs(retry) {
  let pause = retry.initialBackoffMs;
  for (;;) {
    yield pause * (1 - retry.jitter * Math.random());
    pause = Math.min(pause * retry.multiplier, retry.maxBackoffMs);
  }
}

/** A `google.protobuf.Value` as loaded (`{kind: 'string_value', string_value: 'gold'}`) as plain JS. */
function fromValue(value) {
  if (value == null || value.kind == null || value.kind === 'null_value') return null;
  switch (value.kind) {
    case 'list_value':
      return (value.list_value.values || []).map(fromValue);
    case 'struct_value':
      return Object.fromEntries(
        Object.entries(value.struct_value.fields || {}).map(([k, v]) => [k, fromValue(v)]),
      );
    default:
      return value[value.kind];
  }
}

function subscribeRequest({ start = 'latest', filter = {}, includeProfile = false, heartbeatSeconds = 0 }) {
  const request = {
    include_profile: includeProfile,
    heartbeat_seconds: heartbeatSeconds,
    filter: {
      kinds: (filter.kinds || []).map((k) => (k.startsWith('CHANGE_KIND_') ? k : `CHANGE_KIND_${k}`)),
      field_paths: filter.fieldPaths || filter.field_paths || [],
      sources: filter.sources || [],
    },
  };
  if (start === 'earliest') return { ...request, start: 'START_EARLIEST' };
  if (start === 'latest') return { ...request, start: 'START_LATEST' };
  if (Number.isSafeInteger(start) && start >= 0) {
    return { ...request, start: 'START_AFTER_SEQUENCE', after_sequence: start };
  }
  throw new TypeError(`start must be 'earliest', 'latest' or a sequence >= 0, not ${start}`);
}

/**
 * The changes of a subscription across reconnects: an async iterable (and its own iterator).
 *
 * It remembers the last sequence it yielded and, when the server goes away or ends the stream,
 * reconnects with backoff and resumes after that sequence: no change is missed, none comes twice.
 * Heartbeats are not yielded; they update `headSequence`.
 */
class ChangeStream {
  constructor(open, request, start, retry) {
    /** The sequence of the last change yielded (null before the first). */
    this.lastSequence = Number.isSafeInteger(start) ? start : null;
    /** The change log's head as of the last heartbeat or change (null before either). */
    this.headSequence = null;
    /** How often the stream has reconnected. */
    this.reconnects = 0;
    this._open = open;
    this._request = request;
    this._start = start;
    this._retry = retry;
    this._call = null;
    this._closed = false;
    this._wake = null;
    this._iterator = this._run();
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  next() {
    return this._iterator.next();
  }

  return() {
    this.close();
    return this._iterator.return();
  }

  /** End the subscription; a pending `next()` resolves as done. */
  close() {
    this._closed = true;
    if (this._call) this._call.cancel();
    if (this._wake) this._wake();
  }

  _resumeRequest() {
    if (this.lastSequence !== null) {
      return { ...this._request, start: 'START_AFTER_SEQUENCE', after_sequence: this.lastSequence };
    }
    if (this._start === 'latest' && this.headSequence !== null) {
      // Nothing yielded yet, but the subscription had reached this head: resuming after it
      // (not at a new "latest") keeps the changes committed while we were away.
      return { ...this._request, start: 'START_AFTER_SEQUENCE', after_sequence: this.headSequence };
    }
    return this._request;
  }

  async* _run() {
    let failures = 0;
    let pauses = backoffs(this._retry);
    while (!this._closed) {
      const call = this._open(this._resumeRequest());
      this._call = call;
      let error = null;
      try {
        for await (const response of call) {
          failures = 0;
          pauses = backoffs(this._retry);
          if (response.message === 'heartbeat') {
            this.headSequence = Math.max(this.headSequence ?? 0, response.heartbeat.head_sequence);
            continue;
          }
          const change = response.change;
          // Never expected (the server skips what we have), but a duplicate must not pass.
          if (this.lastSequence !== null && change.sequence <= this.lastSequence) continue;
          this.lastSequence = change.sequence;
          this.headSequence = Math.max(this.headSequence ?? 0, change.sequence);
          yield change;
        }
      } catch (caught) {
        if (this._closed) return;
        if (!RECONNECT_CODES.has(caught.code)) throw ProfileServiceError.from(caught);
        error = caught;
      } finally {
        call.cancel();
      }
      if (this._closed) return;
      failures += 1;
      const limit = this._retry.maxReconnects;
      if (limit !== null && limit !== undefined && failures > limit) {
        if (error) throw ProfileServiceError.from(error);
        throw new ProfileServiceError(grpc.status.UNAVAILABLE, `the server ended the subscription ${failures} times in a row`);
      }
      this.reconnects += 1;
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, pauses.next().value);
        this._wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this._wake = null;
    }
  }
}

/** A client of one ProfileService. */
class ProfileClient {
  /**
   * @param {string} target `host:port` of the server.
   * @param {object} [options]
   * @param {string} [options.token] Bearer token (sent as `authorization: Bearer <token>`).
   * @param {{ca?: Buffer, cert?: Buffer, key?: Buffer, serverName?: string}} [options.tls]
   *   TLS (with `cert` and `key`, mutual TLS); plaintext when absent.
   * @param {number} [options.timeoutMs=10000] Deadline of each unary call, retries included.
   * @param {object} [options.retry] Overrides of the backoff (`maxAttempts`, `initialBackoffMs`,
   *   `maxBackoffMs`, `multiplier`, `jitter`, `maxReconnects`: null = reconnect forever).
   * @param {string} [options.protoDir] Where `unified_profile/v1/*.proto` are (the repository's).
   */
  constructor(target, { token, tls, timeoutMs = 10000, retry = {}, protoDir = DEFAULT_PROTO_DIR } = {}) {
    const definition = protoLoader.loadSync(SERVICE_FILE, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
    const { ProfileService } = grpc.loadPackageDefinition(definition).unified_profile.v1;
    this.retry = { ...DEFAULT_RETRY, ...retry };
    this.timeoutMs = timeoutMs;
    const credentials = tls
      ? grpc.credentials.createSsl(tls.ca || null, tls.key || null, tls.cert || null)
      : grpc.credentials.createInsecure();
    const options = {
      // The channel's own reconnect backoff grows to 120 s by default; ours bounds it.
      'grpc.initial_reconnect_backoff_ms': Math.max(this.retry.initialBackoffMs, 100),
      'grpc.max_reconnect_backoff_ms': Math.max(this.retry.maxBackoffMs, 100),
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
    };
    if (tls && tls.serverName) options['grpc.ssl_target_name_override'] = tls.serverName;
    this._stub = new ProfileService(target, credentials, options);
    this._token = token;
  }

  /** Close the channel; calls and watches in progress are cancelled. */
  close() {
    this._stub.close();
  }

  /**
   * One profile by id; an alias gives the surviving profile.
   * @param {string} profileId
   * @param {{fields?: string[], timeoutMs?: number}} [options] `fields`: only these paths.
   * @returns {Promise<object>} The profile.
   */
  async get(profileId, { fields, timeoutMs } = {}) {
    const request = { profile_id: profileId, field_mask: fields ? { paths: fields } : null };
    return (await this._read('GetProfile', request, timeoutMs)).profile;
  }

  /**
   * The one profile holding an identifier (normalised by the server as ingest does).
   * @param {string} identifierType `email`, `crm_id`, ...
   * @param {string} value
   * @param {{fields?: string[], timeoutMs?: number}} [options]
   * @returns {Promise<object>} The profile.
   */
  async lookup(identifierType, value, { fields, timeoutMs } = {}) {
    const request = { identifier_type: identifierType, value, field_mask: fields ? { paths: fields } : null };
    return (await this._read('LookupProfile', request, timeoutMs)).profile;
  }

  /**
   * Follow the change log from `start`, then live; reconnects and resumes by itself.
   * @param {object} [options]
   * @param {'earliest'|'latest'|number} [options.start='latest'] A number resumes after it.
   * @param {{kinds?: string[], fieldPaths?: string[], sources?: string[]}} [options.filter]
   * @param {boolean} [options.includeProfile=false]
   * @param {number} [options.heartbeatSeconds] Server heartbeat interval while idle.
   * @returns {ChangeStream}
   */
  watch(options = {}) {
    const request = subscribeRequest(options);
    const open = (req) => this._stub.SubscribeProfileChanges(req, this._metadata());
    return new ChangeStream(open, request, options.start ?? 'latest', this.retry);
  }

  _metadata() {
    const metadata = new grpc.Metadata();
    if (this._token) metadata.set('authorization', `Bearer ${this._token}`);
    return metadata;
  }

  // A read within one deadline; retried with backoff on UNAVAILABLE while attempts and time remain.
  async _read(method, request, timeoutMs = this.timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    const pauses = backoffs(this.retry);
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await new Promise((resolve, reject) => {
          this._stub[method](request, this._metadata(), { deadline }, (error, response) =>
            (error ? reject(error) : resolve(response)));
        });
      } catch (error) {
        const pause = pauses.next().value;
        const retry = error.code === grpc.status.UNAVAILABLE
          && attempt < this.retry.maxAttempts
          && Date.now() + pause < deadline;
        if (!retry) throw ProfileServiceError.from(error);
        await new Promise((resolve) => setTimeout(resolve, pause));
      }
    }
  }
}

module.exports = {
  ChangeStream,
  ProfileClient,
  ProfileServiceError,
  fromValue,
  subscribeRequest,
};
