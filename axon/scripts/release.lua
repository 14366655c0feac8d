-- A worker lets go of a task: forget its lease deadline and put the task on the
-- compactor's to-do list. Most releases follow a terminal transition; the
-- compactor checks the state and drops entries of tasks that are not finished.
--
-- KEYS[1] in-flight sorted set, KEYS[2] finished sorted set
-- ARGV[1] task id, ARGV[2] now (ms)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
