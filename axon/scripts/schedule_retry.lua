-- Move a task from in flight to the delayed set, due at a later time.
-- KEYS[1] in-flight set, KEYS[2] delayed set; ARGV[1] task id, ARGV[2] '<lane>|<id>', ARGV[3] due (ms)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
