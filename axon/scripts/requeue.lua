-- Move a task from in flight back into a lane, once: only the caller that removes
-- it from the in-flight set pushes it, so racing watchdogs cannot queue it twice.
-- KEYS[1] in-flight set, KEYS[2] lane, KEYS[3] signal stream
-- ARGV[1] task id, ARGV[2] 'front' or 'back'
-- Returns 1 if queued, 0 if it was not in flight.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] == 'front' then
  redis.call('LPUSH', KEYS[2], ARGV[1])
else
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '1000', '*', 't', ARGV[1])
return 1
