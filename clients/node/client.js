// A third-party client of the platform's broker, written only from the published documents
// (README.md, "Publishing a command from an internal service", and asyncapi.yaml), never from the
// Python code: if this needs to know something those documents do not say, the documents are
// wrong. tests/test_node_client.py runs test/client.test.js against the test stack.
//
// What the documents ask of a publisher, and where this follows it:
// - commands go to the durable direct exchange `commands`, routing key = the command name;
// - properties: content_type application/json, a unique message_id (required: without one the
//   command is a 400), type = the command name, reply_to and correlation_id (AMQP properties,
//   never headers);
// - header `authorization: Bearer <access token>` for every command but the public ones; a string
//   or an AMQP byte array (a Node Buffer), read as UTF-8;
// - replies come to reply_to (direct reply-to here) with the command's correlation_id, as
//   {"ok": true, "result": ...} or {"ok": false, "error": {status, title, detail}};
// - publish with mandatory=true and wait with a timeout: a command no service consumes is
//   unroutable and comes back as basic.return instead of vanishing.

import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';

const COMMANDS_EXCHANGE = 'commands';
const DIRECT_REPLY_TO = 'amq.rabbitmq.reply-to';

/** A command that came back unroutable (basic.return): no service consumes its routing key. */
export class UnroutableCommand extends Error {
  constructor(command, replyText) {
    super(`${command} is unroutable: ${replyText}`);
    this.command = command;
    this.replyText = replyText;
  }
}

/** No reply within the timeout. */
export class ReplyTimeout extends Error {}

export class CommandClient {
  /** Connects to `url` (AMQP_URL: the broker and the vhost) and starts taking replies. */
  static async connect(url, { timeoutMs = 10_000 } = {}) {
    const connection = await amqp.connect(url);
    // A confirm channel: the broker acks each publish, and a mandatory one it cannot route comes
    // back (basic.return) before that ack.
    const channel = await connection.createConfirmChannel();
    const client = new CommandClient(connection, channel, timeoutMs);
    await channel.checkExchange(COMMANDS_EXCHANGE);
    // Direct reply-to: consume the pseudo-queue, without acks, before the first publish.
    await channel.consume(DIRECT_REPLY_TO, (message) => client.#onReply(message), { noAck: true });
    channel.on('return', (message) => client.#onReturn(message));
    return client;
  }

  #connection;
  #channel;
  #timeoutMs;
  #pending = new Map(); // correlation_id -> {resolve, reject, timer, command}

  constructor(connection, channel, timeoutMs) {
    this.#connection = connection;
    this.#channel = channel;
    this.#timeoutMs = timeoutMs;
  }

  /**
   * Sends `command` with `payload` and resolves with its reply, {ok, result} or {ok: false, error}.
   * Rejects with UnroutableCommand when no service consumes it and ReplyTimeout when nothing answers.
   *
   * options.token: the access token (sent as `authorization: Bearer <token>`);
   * options.tokenAsBuffer: send that header as an AMQP byte array instead of a string;
   * options.messageId: the idempotency key (a new UUID by default; null leaves it out);
   * options.body: raw bytes to send instead of JSON.stringify(payload).
   */
  async call(command, payload, { token, tokenAsBuffer = false, messageId = randomUUID(), body } = {}) {
    const correlationId = randomUUID();
    const headers = {};
    if (token !== undefined) {
      const value = `Bearer ${token}`;
      headers.authorization = tokenAsBuffer ? Buffer.from(value, 'utf8') : value;
    }
    const properties = {
      contentType: 'application/json',
      type: command,
      replyTo: DIRECT_REPLY_TO,
      correlationId,
      persistent: true,
      mandatory: true,
      headers,
    };
    if (messageId !== null) properties.messageId = messageId;
    const reply = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(correlationId);
        reject(new ReplyTimeout(`no reply to ${command} within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      this.#pending.set(correlationId, { resolve, reject, timer, command });
    });
    const content = body ?? Buffer.from(JSON.stringify(payload), 'utf8');
    this.#channel.publish(COMMANDS_EXCHANGE, command, content, properties);
    // Both at once: an unroutable command's return settles `reply` while the confirm is pending.
    const [answer] = await Promise.all([reply, this.#channel.waitForConfirms()]);
    return answer;
  }

  async close() {
    for (const { timer } of this.#pending.values()) clearTimeout(timer);
    await this.#channel.close();
    await this.#connection.close();
  }

  #settle(correlationId, settle) {
    const pending = this.#pending.get(correlationId);
    if (pending === undefined) return; // late, or not ours
    this.#pending.delete(correlationId);
    clearTimeout(pending.timer);
    settle(pending);
  }

  #onReply(message) {
    if (message === null) return; // the broker cancelled the consumer
    const reply = JSON.parse(message.content.toString('utf8'));
    this.#settle(message.properties.correlationId, ({ resolve }) => resolve(reply));
  }

  #onReturn(message) {
    this.#settle(message.properties.correlationId, ({ reject, command }) =>
      reject(new UnroutableCommand(command, message.fields.replyText)),
    );
  }
}

/** The result of a successful reply; throws with the error's status otherwise. */
export function resultOf(reply) {
  if (!reply.ok) {
    const error = new Error(`${reply.error.status} ${reply.error.title}: ${reply.error.detail}`);
    error.status = reply.error.status;
    throw error;
  }
  return reply.result;
}
