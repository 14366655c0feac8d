-- Put a task id into a lane and wake idle workers.
-- KEYS[1] lane list, KEYS[2] signal stream; ARGV[1] task id, ARGV[2] 'front' or 'back'
if ARGV[2] == 'front' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
else
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000', '*', 't', ARGV[1])
return 1
