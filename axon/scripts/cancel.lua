-- Raise a task's cancel flag unless it already finished.
-- KEYS[1] task hash; ARGV[1] now (ms); ARGV[2] reason ('' for none; the first one given is kept)
-- Returns {'ok', state} or {'not_found'} or {'terminal', state}.
local TERMINAL = __TERMINAL__
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'not_found'} end
if TERMINAL[state] then return {'terminal', state} end
redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_ms', ARGV[1])
if ARGV[2] and ARGV[2] ~= '' then redis.call('HSETNX', KEYS[1], 'cancel_reason', ARGV[2]) end
return {'ok', state}
