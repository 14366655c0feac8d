-- Add hashes to a task's stored Merkle tree, if nobody extended it meanwhile.
-- The tree is a flat array of 32-byte hashes split over chunk strings; the
-- caller computed the new hashes from the events and the tree's frontier.
-- Two API servers extending at once compute identical bytes; the size check
-- keeps the second from writing them twice.
--
-- KEYS[1] merkle hash, KEYS[2..] chunk strings, one per write
-- ARGV[1] expected size (leaves), ARGV[2] new size,
-- ARGV[3..] per write: byte offset in its chunk, bytes
local size = tonumber(redis.call('HGET', KEYS[1], 'size') or '0')
if size ~= tonumber(ARGV[1]) then return {'stale', size} end
for i = 2, #KEYS do
  redis.call('SETRANGE', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
end
redis.call('HSET', KEYS[1], 'size', ARGV[2])
return {'ok', tonumber(ARGV[2])}
