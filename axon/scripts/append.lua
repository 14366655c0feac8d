-- Append a batch of pre-built events to one task's log, atomically, optionally
-- changing the task's state in the same step. Everything is checked before
-- anything is written, so a rejected batch writes nothing.
--
-- KEYS[1] task hash, KEYS[2] events stream
-- KEYS[3], KEYS[4] optional, single server only: the queue's in-flight set and
--   finished set. With them, a batch that ends the task (terminal target) also
--   releases it, as release.lua does: out of the in-flight set, onto the
--   compactor's to-do list.
-- ARGV[1] expected head seq      ARGV[2] expected head hash
-- ARGV[3] writer's epoch (fencing token)
-- ARGV[4] head hash after the batch (hash of the last event's bytes)
-- ARGV[5] target state or ''     ARGV[6] new epoch or ''
-- ARGV[7] now (ms)               ARGV[8] lease guard: '' or a time (ms) the lease
--   deadline must be before (so a watchdog only takes over an expired lease)
-- ARGV[9] n: number of extra record fields
-- ARGV[10 .. 9+2n] extra field/value pairs ('' value deletes the field)
-- ARGV[10+2n ..] kind/bytes pairs, one per event, in seq order (the kind is passed
--   for the checks below; the stream stores only the bytes, which contain it)
--
-- Returns {'ok', last_seq} or one of
--   {'not_found'} {'terminal', state} {'fenced', epoch}
--   {'stale', head_seq, head_hash} {'illegal', state, target} {'bad_batch', why}
--   {'lease_live', deadline}
--
-- After a batch lands, the new head seq is published on the task's tail channel
-- (the task key with 'task' replaced by 'tail'): API servers wake their live
-- tails on it and read the events by seq, so a lost notification costs latency,
-- never an event.
local TRANSITIONS = __TRANSITIONS__
local TERMINAL = __TERMINAL__

local rec = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'head_seq', 'head_hash', 'started_ms',
  'lease_deadline_ms', 'events', 'bytes')
local state = rec[1]
if not state then return {'not_found'} end

local nfields = tonumber(ARGV[9])
local first = 10 + 2 * nfields
local last = #ARGV

local function release()
  if KEYS[4] and TERMINAL[ARGV[5]] then
    local id = string.match(KEYS[1], '{([^}]*)}:task$')
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZADD', KEYS[4], ARGV[7], id)
  end
end

-- A replay of a batch that already landed (the client retried after losing the
-- reply): the head is exactly where this batch put it, so report success rather
-- than a stale head, a fence or a terminal state that this very batch caused.
if rec[4] == ARGV[4] and tonumber(rec[3]) == tonumber(ARGV[1]) + (last - first + 1) / 2 then
  release()
  return {'ok', tonumber(rec[3])}
end

if TERMINAL[state] then return {'terminal', state} end
if rec[2] ~= ARGV[3] then return {'fenced', rec[2]} end
if rec[3] ~= ARGV[1] or rec[4] ~= ARGV[2] then return {'stale', rec[3], rec[4]} end

local guard = ARGV[8]
if guard ~= '' and rec[6] and tonumber(rec[6]) >= tonumber(guard) then
  return {'lease_live', rec[6]}
end

local target = ARGV[5]
if target ~= '' then
  local allowed = TRANSITIONS[state]
  if not allowed or not allowed[target] then return {'illegal', state, target} end
end
local new_epoch = ARGV[6]
if new_epoch ~= '' and tonumber(new_epoch) <= tonumber(rec[2]) then
  return {'bad_batch', 'new epoch must be greater than the current one'}
end

if last < first + 1 or (last - first) % 2 ~= 1 then
  return {'bad_batch', 'a batch needs at least one kind/bytes pair'}
end
-- A terminal kind may only be the last event, written with its own terminal state.
for i = first, last, 2 do
  local kind = ARGV[i]
  if TERMINAL[kind] and (i + 1 ~= last or target ~= kind) then
    return {'bad_batch', 'terminal event ' .. kind .. ' must end a batch that sets that state'}
  end
end
if TERMINAL[target] and ARGV[last - 1] ~= target then
  return {'bad_batch', 'a terminal state needs its terminal event last in the batch'}
end

local stream = KEYS[2]
local seq = tonumber(rec[3])
local nbytes = 0
for i = first, last, 2 do
  seq = seq + 1
  redis.call('XADD', stream, seq .. '-0', 'e', ARGV[i + 1])
  nbytes = nbytes + string.len(ARGV[i + 1])
end

local now = ARGV[7]
local task = KEYS[1]
-- Every field this batch sets goes in one HSET and every field it clears in one
-- HDEL (the counters are read above, so they need no HINCRBY): each call a script
-- makes costs the server about as much as a command from a client.
local set = {'head_seq', seq, 'head_hash', ARGV[4], 'updated_ms', now,
  'events', (tonumber(rec[7]) or 0) + (last - first + 1) / 2,
  'bytes', (tonumber(rec[8]) or 0) + nbytes}
local function put(field, value)
  set[#set + 1] = field
  set[#set + 1] = value
end
if target ~= '' then
  put('state', target)
  if target == 'running' and not rec[5] then put('started_ms', now) end
  if TERMINAL[target] then put('finished_ms', now) end
end
if new_epoch ~= '' then put('epoch', new_epoch) end
local clear = {}
for i = 10, 9 + 2 * nfields, 2 do
  if ARGV[i + 1] == '' then
    clear[#clear + 1] = ARGV[i]
  else
    put(ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', task, unpack(set))
if #clear > 0 then redis.call('HDEL', task, unpack(clear)) end
redis.call('PUBLISH', string.sub(task, 1, -5) .. 'tail', seq)
release()
return {'ok', seq}
