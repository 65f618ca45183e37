// The official OpenAI Node SDK against harmony-proxy's `POST /v1/responses` (and its mock
// upstream): `responses.create` plain and streamed (events checked one by one), and the
// `responses.stream(...).finalResponse()` helper, whose accumulator throws on an event type
// it does not know and on a text delta whose content part was never announced.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const client = new OpenAI({ apiKey: 'sk-conformance', baseURL: `${process.env.PROXY_URL}/v1`, maxRetries: 0 });
const MODEL = 'gpt-oss-20b';
const tools = [{
  type: 'function', name: 'get_weather', description: 'Weather for a city', strict: true,
  parameters: { type: 'object', properties: { city: { type: 'string' }, unit: { type: 'string' } }, required: ['city', 'unit'], additionalProperties: false },
}];
const TERMINAL = new Set(['response.completed', 'response.failed', 'response.incomplete', 'error']);
const LIFECYCLE = new Set(['response.created', 'response.in_progress', 'response.completed', 'response.failed', 'response.incomplete']);

// Consecutive sequence numbers from 0, created first and completed last, one response id,
// each output_item.added closed by one output_item.done (same output_index, same item id),
// item events inside their item, text deltas after their content part, and the completed
// output equal to the done items in order.
function checkEvents(events) {
  assert.ok(events.length > 0, 'no events');
  const types = events.map((e) => e.type);
  assert.deepEqual(events.map((e) => e.sequence_number), events.map((_, i) => i), types.join(' '));
  assert.equal(types[0], 'response.created');
  assert.equal(types.at(-1), 'response.completed');
  assert.equal(types.filter((t) => TERMINAL.has(t)).length, 1, types.join(' '));
  assert.equal(new Set(events.filter((e) => LIFECYCLE.has(e.type)).map((e) => e.response.id)).size, 1, 'one response id');
  const added = new Map();
  const done = new Map();
  const parts = new Set();
  for (const e of events) {
    if (e.type === 'response.output_item.added') {
      assert.ok(!added.has(e.output_index), `output_index ${e.output_index} added twice`);
      assert.ok(e.item.id, 'an added item has an id');
      added.set(e.output_index, e.item);
      (e.item.content ?? []).forEach((_, c) => parts.add(`${e.output_index}/${c}`));
    } else if (e.type === 'response.output_item.done') {
      const a = added.get(e.output_index);
      assert.ok(a, `done before added: ${e.output_index}`);
      assert.ok(!done.has(e.output_index), `output_index ${e.output_index} done twice`);
      assert.deepEqual([e.item.id, e.item.type], [a.id, a.type]);
      done.set(e.output_index, e.item);
    } else if (e.output_index !== undefined) {
      assert.ok(added.has(e.output_index) && !done.has(e.output_index), `${e.type} outside its item`);
      if (e.item_id !== undefined) assert.equal(e.item_id, added.get(e.output_index).id, `${e.type} names another item`);
      const key = `${e.output_index}/${e.content_index ?? 0}`;
      if (e.type === 'response.content_part.added') parts.add(key);
      if (e.type === 'response.output_text.delta' || e.type === 'response.reasoning_text.delta') {
        assert.ok(parts.has(key), `${e.type} before its content_part.added`);
      }
    }
  }
  const indexes = [...added.keys()].sort((a, b) => a - b);
  assert.deepEqual(indexes, indexes.map((_, i) => i));
  assert.deepEqual([...done.keys()].sort((a, b) => a - b), indexes, 'every added item is done');
  const final = events.at(-1).response;
  assert.deepEqual(final.output, indexes.map((i) => done.get(i)));
  return final;
}

const viaCreate = (body) => client.responses.create({ model: MODEL, ...body });
const viaRawStream = async (body) => {
  const events = [];
  for await (const e of await client.responses.create({ model: MODEL, ...body, stream: true })) events.push(e);
  return checkEvents(events);
};
const viaHelper = (body) => client.responses.stream({ model: MODEL, ...body }).finalResponse();

function checkResponse(r) {
  assert.equal(r.object, 'response');
  assert.ok(typeof r.id === 'string' && r.id);
  assert.equal(r.status, 'completed');
  assert.ok(!JSON.stringify(r).includes('<|'), 'Harmony markup reached the client');
  const ids = r.output.map((o) => o.id);
  assert.ok(ids.every(Boolean) && new Set(ids).size === ids.length, JSON.stringify(ids));
  const u = r.usage;
  for (const n of [u.input_tokens, u.output_tokens, u.total_tokens, u.input_tokens_details.cached_tokens, u.output_tokens_details.reasoning_tokens]) {
    assert.ok(Number.isInteger(n) && n >= 0, JSON.stringify(u));
  }
  assert.equal(u.total_tokens, u.input_tokens + u.output_tokens);
}

const reasoningOf = (item) => {
  assert.equal(item.type, 'reasoning');
  assert.deepEqual(item.summary, []);
  assert.ok(item.content.length && item.content.every((c) => c.type === 'reasoning_text'), JSON.stringify(item));
  return item.content.map((c) => c.text).join('');
};
const textOf = (item) => {
  assert.equal(item.type, 'message');
  assert.equal(item.role, 'assistant');
  assert.ok(item.content.length && item.content.every((c) => c.type === 'output_text'), JSON.stringify(item));
  return item.content.map((c) => c.text).join('');
};

for (const [how, call] of [['create', viaCreate], ['raw stream', viaRawStream], ['stream helper', viaHelper]]) {
  test(`responses: hello via ${how}`, async () => {
    const r = await call({ input: 'scenario:hello' });
    checkResponse(r);
    assert.deepEqual(r.output.map((o) => o.type), ['reasoning', 'message']);
    assert.equal(reasoningOf(r.output[0]), 'The user says hello. Reply briefly and warmly.');
    assert.equal(textOf(r.output[1]), 'Hello! How can I help you today?');
    if (how !== 'raw stream') assert.equal(r.output_text, 'Hello! How can I help you today?');
  });

  test(`responses: weather via ${how}`, async () => {
    const r = await call({ input: 'scenario:weather', tools });
    checkResponse(r);
    assert.deepEqual(r.output.map((o) => o.type), ['reasoning', 'message', 'function_call']);
    assert.equal(reasoningOf(r.output[0]), 'Need the weather tool for Paris.');
    assert.equal(textOf(r.output[1]), "I'll check the weather.");
    const fc = r.output[2];
    assert.equal(fc.name, 'get_weather');
    assert.match(fc.call_id, /^call_/);
    assert.deepEqual(JSON.parse(fc.arguments), { city: 'Paris', unit: 'celsius' });
  });
}

for (const stream of [false, true]) {
  test(`responses: no model is a 400 naming it (stream: ${stream})`, async () => {
    await assert.rejects(client.responses.create({ input: 'scenario:hello', stream }), (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, String(e));
      assert.equal(e.status, 400);
      assert.match(e.message, /model/i);
      return true;
    });
  });
}
