-- Take a cancelled task out of its lane, the delayed set and the in-flight set.
-- KEYS[1] lane, KEYS[2] delayed set, KEYS[3] in-flight set; ARGV[1] task id, ARGV[2] '<lane>|<id>'
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
