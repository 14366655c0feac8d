-- Renew a running task's lease if the caller still holds it.
-- KEYS[1] task hash; ARGV[1] the worker's epoch, ARGV[2] new deadline (ms)
-- Returns {'ok', cancel_requested} or {'lost', state, epoch}.
local rec = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'cancel_requested')
if rec[1] ~= 'running' or rec[2] ~= ARGV[1] then
  return {'lost', rec[1] or '', rec[2] or ''}
end
redis.call('HSET', KEYS[1], 'lease_deadline_ms', ARGV[2])
return {'ok', rec[3] or '0'}
