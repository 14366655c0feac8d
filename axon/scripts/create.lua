-- Create a task record and append its first event, atomically; on a single
-- server, also list it for its tenant and put it in its lane in the same step.
-- KEYS[1] task hash, KEYS[2] events stream
-- KEYS[3..5] optional, only where every key is on one server (not a cluster):
--   tenant's task index, lane list, signal stream
-- ARGV[1] task id (used with KEYS[3..5]), ARGV[2] first event bytes,
-- ARGV[3] hash of those bytes, ARGV[4] now (ms), ARGV[5..] field/value pairs of the record
-- Returns {'ok'} or {'exists'}.
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then  -- same slot: one call
  -- A replay of this very create (the client retried after losing the reply)
  -- finds its own first event: success, not a clash (and, with KEYS[3..5],
  -- already listed and queued by the first run).
  local head = redis.call('XRANGE', KEYS[2], '1-0', '1-0')
  if head[1] and head[1][2][2] == ARGV[2] then return {'ok'} end
  return {'exists'}
end
redis.call('XADD', KEYS[2], '1-0', 'e', ARGV[2])
local fields = {unpack(ARGV, 5)}
for _, v in ipairs({
  'state', 'queued', 'epoch', '0', 'attempt', '0',
  'head_seq', '1', 'head_hash', ARGV[3],
  'events', '1', 'bytes', tostring(string.len(ARGV[2])),
  'created_ms', ARGV[4], 'updated_ms', ARGV[4]}) do
  fields[#fields + 1] = v
end
redis.call('HSET', KEYS[1], unpack(fields))  -- the record in one call
if KEYS[5] then
  redis.call('ZADD', KEYS[3], 0, ARGV[1])
  redis.call('RPUSH', KEYS[4], ARGV[1])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', '1000', '*', 't', ARGV[1])
end
return {'ok'}
