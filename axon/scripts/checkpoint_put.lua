-- Record a task's latest signed checkpoint, never going backwards and never
-- accepting a second, different root for a size already signed.
--
-- KEYS[1] merkle hash
-- ARGV[1] size, ARGV[2] root (base64), ARGV[3] signed note
-- Returns {'ok'} | {'newer', size, note} (a larger checkpoint is already stored)
--   | {'conflict', root} (this size was signed with another root)
local cur = redis.call('HMGET', KEYS[1], 'cp_size', 'cp_root', 'cp_note')
local size = tonumber(ARGV[1])
if cur[1] then
  local cur_size = tonumber(cur[1])
  if cur_size == size and cur[2] ~= ARGV[2] then return {'conflict', cur[2]} end
  if cur_size > size then return {'newer', cur_size, cur[3]} end
end
redis.call('HSET', KEYS[1], 'cp_size', size, 'cp_root', ARGV[2], 'cp_note', ARGV[3])
return {'ok'}
