-- The compactor drops a task from its to-do list, or moves it later, only if
-- nobody touched the entry since it was read: a worker that released the task
-- meanwhile (new score) keeps it listed.
--
-- KEYS[1] finished sorted set
-- ARGV[1] task id, ARGV[2] score the compactor read, ARGV[3] new score or '' to remove
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
