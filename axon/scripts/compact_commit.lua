-- The compactor's last step: record the new snapshot and trim what it archived,
-- atomically. Runs only after every archived byte is durable, and only if this
-- replica still holds the task's compaction lock and the snapshot is the one it
-- started from, so two replicas can never trim the same range twice or trim a
-- range the recorded snapshot does not cover.
--
-- KEYS[1] task hash, KEYS[2] events stream, KEYS[3] snapshot, KEYS[4] lock,
-- KEYS[5..] tree chunk strings now in the archive (deleted)
-- ARGV[1] lock owner, ARGV[2] archived_to the snapshot had (0: none),
-- ARGV[3] new archived_to, ARGV[4] snapshot JSON, ARGV[5] '1' to delete the stream
-- (a finished task archived to its head)
-- Returns {'ok'} | {'lost_lock'} | {'moved', archived_to}
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return {'lost_lock'} end
local had = tonumber(redis.call('HGET', KEYS[1], 'archived_to') or '0')
if had ~= tonumber(ARGV[2]) then return {'moved', had} end
redis.call('SET', KEYS[3], ARGV[4])
redis.call('HSET', KEYS[1], 'archived_to', ARGV[3])
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[2])
else
  redis.call('XTRIM', KEYS[2], 'MINID', (tonumber(ARGV[3]) + 1) .. '-0')
end
for i = 5, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('DEL', KEYS[4])
return {'ok'}
