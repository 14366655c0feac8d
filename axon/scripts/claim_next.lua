-- Take the first task id from the first non-empty lane, in the order given, and
-- record it as in flight with a deadline, in one step: a worker that dies right
-- after this still leaves the id where the watchdog will find it.
-- KEYS[1] in-flight sorted set, KEYS[2..] lanes in the order to try
-- ARGV[1] deadline (ms) for the claim to be completed or renewed
-- Returns {task id, index of the lane in KEYS[2..] (1-based)} or false.
for i = 2, #KEYS do
  local id = redis.call('LPOP', KEYS[i])
  if id then
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    return {id, i - 1}
  end
end
return false
