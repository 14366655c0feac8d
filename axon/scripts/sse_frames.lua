-- Render a page of a task's events as Server-Sent Events frames (contract 2),
-- inside Redis: one bulk reply instead of five Python objects per event, which is
-- what lets an SSE backfill keep up with a raw XRANGE. Read-only; one key.
--
-- KEYS[1] events stream
-- ARGV[1] first seq wanted (after_seq + 1)   ARGV[2] most events to render
--
-- Returns {first_seq, last_seq, count, terminal (0/1), frames}; count 0 when
-- nothing is at or after ARGV[1]. The caller checks first_seq and contiguity
-- (trimmed events are its business, as in Store.read). Rendering stops after a
-- terminal event. The frame of an event is exactly
--   'id: ' seq '\nevent: ' kind '\ndata: ' <event bytes> '\n\n'
-- with the kind read from the bytes where the writer puts it (after ',"kind":"').
local TERMINAL = __TERMINAL__
local rows = redis.call('XRANGE', KEYS[1], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
local parts = {}
local first, last, terminal = 0, 0, 0
for i = 1, #rows do
  local id = rows[i][1]
  local seq = string.sub(id, 1, string.find(id, '-', 1, true) - 1)
  local raw = rows[i][2][2]
  local k = string.find(raw, ',"kind":"', 1, true)
  if not k then return redis.error_reply('event ' .. id .. ' has no kind field') end
  local e = string.find(raw, '"', k + 9, true)
  local kind = string.sub(raw, k + 9, e - 1)
  parts[i] = 'id: ' .. seq .. '\nevent: ' .. kind .. '\ndata: ' .. raw .. '\n\n'
  if i == 1 then first = tonumber(seq) end
  last = tonumber(seq)
  if TERMINAL[kind] then
    terminal = 1
    break
  end
end
return {first, last, #parts, terminal, table.concat(parts)}
