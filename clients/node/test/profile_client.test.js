'use strict';
/**
 * The Node.js client against the project's Python server.
 *
 * Run by tests/integration/test_node_client.py, which starts the server on a free port over a
 * real store and passes what to expect in the environment:
 *
 *   UP_TARGET, UP_TOKEN          the server and a token with profiles.read and profiles.subscribe
 *   UP_PROFILE_ID, UP_EMAIL      a profile and an email it holds (loyalty.tier "gold")
 *   UP_EXPECT_CHANGES            JSON: [{path, old, new}, ...] the changes the pytest side will make
 *   UP_PROGRESS_FILE             where this test reports (`ready`, `change <seq> ...`) so that the
 *                                pytest side knows when to make the next change or restart
 *
 * Without UP_TARGET the server tests are skipped (the request-building tests still run).
 */

const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { ProfileClient, ProfileServiceError, fromValue, subscribeRequest } = require('../src/index.js');

const env = process.env;
const server = env.UP_TARGET ? false : 'UP_TARGET is not set (tests/integration/test_node_client.py sets it)';

function progress(line) {
  console.log(line);
  if (env.UP_PROGRESS_FILE) fs.appendFileSync(env.UP_PROGRESS_FILE, `${line}\n`);
}

async function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function until(condition, ms, what) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function connect() {
  return new ProfileClient(env.UP_TARGET, {
    token: env.UP_TOKEN,
    retry: { initialBackoffMs: 50, maxBackoffMs: 500 },
  });
}

test('watch requests say where to start and what to filter', () => {
  assert.deepEqual(subscribeRequest({ start: 42, filter: { kinds: ['UPDATED'], fieldPaths: ['consent.*'] } }), {
    start: 'START_AFTER_SEQUENCE',
    after_sequence: 42,
    include_profile: false,
    heartbeat_seconds: 0,
    filter: { kinds: ['CHANGE_KIND_UPDATED'], field_paths: ['consent.*'], sources: [] },
  });
  assert.equal(subscribeRequest({}).start, 'START_LATEST');
  assert.throws(() => subscribeRequest({ start: -1 }), TypeError);
  assert.throws(() => subscribeRequest({ start: 'yesterday' }), TypeError);
});

test('protobuf values become plain values', () => {
  assert.equal(fromValue({ kind: 'string_value', string_value: 'gold' }), 'gold');
  assert.equal(fromValue({ kind: 'null_value', null_value: 'NULL_VALUE' }), null);
  assert.deepEqual(
    fromValue({ kind: 'list_value', list_value: { values: [{ kind: 'number_value', number_value: 1 }] } }),
    [1],
  );
});

test('reads a profile by id and by identifier; failures carry the status', { skip: server }, async () => {
  const client = connect();
  try {
    const profile = await client.get(env.UP_PROFILE_ID);
    assert.equal(profile.profile_id, env.UP_PROFILE_ID);
    assert.equal(profile.loyalty.tier, 'gold');
    assert.equal(profile.provenance['loyalty.tier'].source, 'loyalty');
    const masked = await client.get(env.UP_PROFILE_ID, { fields: ['loyalty.tier'] });
    assert.equal(masked.person, null);
    const found = await client.lookup('email', `  ${env.UP_EMAIL.toUpperCase()} `);
    assert.equal(found.profile_id, env.UP_PROFILE_ID);

    const missing = await client.get('p_nobody').catch((error) => error);
    assert.ok(missing instanceof ProfileServiceError);
    assert.equal(missing.code, 'NOT_FOUND');
    const anonymous = new ProfileClient(env.UP_TARGET);
    const refused = await anonymous.get(env.UP_PROFILE_ID).catch((error) => error);
    anonymous.close();
    assert.equal(refused.code, 'UNAUTHENTICATED');
    assert.match(refused.message, /bearer token/);
  } finally {
    client.close();
  }
});

test('follows the change stream, across a server restart, each change once', { skip: server }, async () => {
  const expected = JSON.parse(env.UP_EXPECT_CHANGES);
  const client = connect();
  const stream = client.watch({ start: 'latest', filter: { fieldPaths: ['loyalty.*'] }, heartbeatSeconds: 1 });
  try {
    // Pull, so that the subscription opens; its first heartbeat says it is established.
    let pending = stream.next();
    await until(() => stream.headSequence !== null, 15000, 'the first heartbeat');
    progress(`ready ${stream.headSequence}`);
    const received = [];
    for (const want of expected) {
      const { value: change, done } = await within(pending, 30000, `a change of ${want.path}`);
      assert.equal(done, false);
      assert.equal(change.profile_id, env.UP_PROFILE_ID);
      assert.equal(change.kind, 'CHANGE_KIND_UPDATED');
      const field = change.changes.find((f) => f.path === want.path);
      assert.ok(field, `no ${want.path} in ${JSON.stringify(change.changes)}`);
      assert.deepEqual([fromValue(field.old_value), fromValue(field.new_value)], [want.old, want.new]);
      received.push(change);
      progress(`change ${change.sequence} ${change.profile_id} ${field.path} `
        + `${JSON.stringify(fromValue(field.old_value))} -> ${JSON.stringify(fromValue(field.new_value))} `
        + `reconnects=${stream.reconnects}`);
      if (received.length < expected.length) pending = stream.next();
    }
    assert.equal(stream.lastSequence, received.at(-1).sequence);
    assert.ok(stream.reconnects >= Number(env.UP_EXPECT_RECONNECTS || 0), `reconnects=${stream.reconnects}`);

    // Resuming after a sequence yields what followed it.
    const resumed = client.watch({ start: received[0].sequence, filter: { fieldPaths: ['loyalty.*'] } });
    const { value: again } = await within(resumed.next(), 15000, 'the resumed change');
    resumed.close();
    assert.equal(again.sequence, received[1].sequence);
  } finally {
    stream.close();
    client.close();
  }
});
