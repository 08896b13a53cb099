// The platform as a Node.js service sees it through amqplib, following only README.md and
// asyncapi.yaml: two users sign up and log in, one writes a post and deletes it, and every refusal
// the documents promise is what comes back. AMQP_URL names the broker and vhost of a running
// stack (tests/test_node_client.py passes the test stack's).

import assert from 'node:assert/strict';
import { generateKeyPairSync, randomUUID, sign } from 'node:crypto';
import { after, before, test } from 'node:test';

import { CommandClient, UnroutableCommand, resultOf } from '../client.js';

const url = process.env.AMQP_URL;
const skip = url ? false : 'AMQP_URL is not set (tests/test_node_client.py sets it)';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let client;
let alice;
let bob;
let post;

before(async () => {
  if (!skip) client = await CommandClient.connect(url, { timeoutMs: 10_000 });
});

after(async () => {
  if (client) await client.close();
});

async function signUp(name) {
  const email = `${name}-${randomUUID()}@Example.com`;
  const password = `${name} rides a ${randomUUID()}`;
  const account = resultOf(await client.call('register', { email, password, display_name: name }));
  assert.match(account.id, UUID);
  assert.equal(account.email, email.toLowerCase());
  assert.equal(account.role, 'user');
  const session = resultOf(await client.call('login', { email, password }));
  assert.equal(session.token_type, 'Bearer');
  assert.ok(session.expires_in > 0);
  return { ...account, token: session.access_token };
}

function statusOf(reply) {
  assert.equal(reply.ok, false, `expected a refusal, got ${JSON.stringify(reply)}`);
  assert.ok(reply.error.title && reply.error.detail, JSON.stringify(reply.error));
  return reply.error.status;
}

const base64url = (value) => Buffer.from(JSON.stringify(value), 'utf8').toString('base64url');
const decode = (part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

test('two users register and log in with register and login', { skip }, async () => {
  alice = await signUp('alice');
  bob = await signUp('bob');
  assert.notEqual(alice.id, bob.id);
});

test('create-post writes a post as its author', { skip }, async () => {
  post = resultOf(await client.call('create-post', { title: 'From Node', body: 'Written with amqplib.' }, { token: alice.token }));
  assert.match(post.id, UUID);
  assert.equal(post.author_id, alice.id);
  assert.equal(post.title, 'From Node');
  assert.ok(!Number.isNaN(Date.parse(post.created_at)), post.created_at); // format: date-time
  assert.deepEqual(resultOf(await client.call('get-post', { post_id: post.id })), post);
});

test('no token is 401', { skip }, async () => {
  assert.equal(statusOf(await client.call('create-post', { title: 'Anonymous', body: 'No token.' })), 401);
  assert.equal(statusOf(await client.call('delete-post', { post_id: post.id })), 401);
});

test('a forged token is 401', { skip }, async () => {
  const [header, claims] = alice.token.split('.').slice(0, 2).map(decode);
  // Alice's token, its subject changed to Bob's, with Alice's signature left on.
  const [h, , signature] = alice.token.split('.');
  const tampered = `${h}.${base64url({ ...claims, sub: bob.id })}.${signature}`;
  // A token with Alice's claims and key id, signed with a key of our own.
  const { privateKey } = generateKeyPairSync('ed25519');
  const unsigned = `${base64url(header)}.${base64url(claims)}`;
  const selfSigned = `${unsigned}.${sign(null, Buffer.from(unsigned), privateKey).toString('base64url')}`;
  for (const token of [tampered, selfSigned, 'not-a-jwt']) {
    assert.equal(statusOf(await client.call('delete-post', { post_id: post.id }, { token })), 401, token);
  }
  resultOf(await client.call('get-post', { post_id: post.id })); // still there
});

test("another user's post is 403, with the token as a byte-array header", { skip }, async () => {
  const reply = await client.call('delete-post', { post_id: post.id }, { token: bob.token, tokenAsBuffer: true });
  assert.equal(statusOf(reply), 403);
  resultOf(await client.call('get-post', { post_id: post.id })); // still there
});

test('an unknown post is 404', { skip }, async () => {
  assert.equal(statusOf(await client.call('delete-post', { post_id: randomUUID() }, { token: alice.token })), 404);
  assert.equal(statusOf(await client.call('get-post', { post_id: randomUUID() })), 404);
});

test('a malformed payload is 422', { skip }, async () => {
  const cases = [
    { title: 'Mine now', body: 'x', author_id: bob.id }, // a field the payload does not define
    { title: 'No body' }, // a required field missing
    { title: 42, body: 'x' }, // the wrong type
  ];
  for (const payload of cases) {
    assert.equal(statusOf(await client.call('create-post', payload, { token: alice.token })), 422, JSON.stringify(payload));
  }
});

test('a body that is not JSON, or a command without message_id, is 400', { skip }, async () => {
  const notJson = await client.call('create-post', null, { token: alice.token, body: Buffer.from('{"title": ') });
  assert.equal(statusOf(notJson), 400);
  const noId = await client.call('create-post', { title: 'x', body: 'y' }, { token: alice.token, messageId: null });
  assert.equal(statusOf(noId), 400);
});

test('an unknown command is unroutable and comes back (mandatory)', { skip }, async () => {
  await assert.rejects(client.call('publish-post', { title: 'x', body: 'y' }, { token: alice.token }), (error) => {
    assert.ok(error instanceof UnroutableCommand, String(error));
    assert.equal(error.replyText, 'NO_ROUTE');
    return true;
  });
});

test('delete-post by the author, with the token as a byte-array header', { skip }, async () => {
  const reply = await client.call('delete-post', { post_id: post.id }, { token: alice.token, tokenAsBuffer: true });
  assert.deepEqual(reply, { ok: true, result: null });
  assert.equal(statusOf(await client.call('get-post', { post_id: post.id })), 404);
});
