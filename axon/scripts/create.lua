-- Create a task record and append its first event, atomically.
-- KEYS[1] task hash, KEYS[2] events stream
-- ARGV[1] first event kind (unused; kept for symmetry with append), ARGV[2] first event bytes, ARGV[3] hash of those bytes,
-- ARGV[4] now (ms), ARGV[5..] field/value pairs of the record
-- Returns {'ok'} or {'exists'}.
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  -- A replay of this very create (the client retried after losing the reply)
  -- finds its own first event: success, not a clash.
  local head = redis.call('XRANGE', KEYS[2], '1-0', '1-0')
  if head[1] and head[1][2][2] == ARGV[2] then return {'ok'} end
  return {'exists'}
end
redis.call('XADD', KEYS[2], '1-0', 'e', ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('HSET', KEYS[1],
  'state', 'queued', 'epoch', '0', 'attempt', '0',
  'head_seq', '1', 'head_hash', ARGV[3],
  'events', '1', 'bytes', tostring(string.len(ARGV[2])),
  'created_ms', ARGV[4], 'updated_ms', ARGV[4])
return {'ok'}
