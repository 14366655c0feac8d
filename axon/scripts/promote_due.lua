-- Move retries whose backoff has passed from the delayed set into their lanes.
-- KEYS[1] delayed set, KEYS[2] signal stream, KEYS[3..] lanes
-- ARGV[1] now (ms), ARGV[2..] lane names, in the order of KEYS[3..]
-- A member whose lane is no longer configured goes to the last (lowest) lane.
-- Returns how many were moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  local bar = string.find(member, '|', 1, true)
  local lane, id = string.sub(member, 1, bar - 1), string.sub(member, bar + 1)
  local key = KEYS[#KEYS]
  for j = 2, #ARGV do
    if ARGV[j] == lane then key = KEYS[j + 1] end
  end
  redis.call('ZREM', KEYS[1], member)
  redis.call('RPUSH', key, id)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000', '*', 't', id)
end
return #due
