-- Take up to n task ids from the lanes and record each as in flight with a
-- deadline, in one step: a worker that dies right after this still leaves the
-- ids where the watchdog will find them.
-- KEYS[1] in-flight sorted set, KEYS[2..] lanes, highest priority first
-- ARGV[1] deadline (ms) for the claims to be completed or renewed
-- ARGV[2] n: how many ids to take at most (default 1)
-- ARGV[3] r: how many of those scan the lanes lowest first (lane fairness; default 0)
-- ARGV[4], ARGV[5] optional, single server only: what comes before and after the
--   id in a task's record key. With them, each claim also returns the record as
--   HGETALL gives it, read in this same step (the worker's first read of the task).
--   The record keys cannot be declared up front, so a cluster never passes these.
-- The r fairness claims take one id each from the lowest non-empty lane; the
-- rest take ids from the first non-empty lane in order, then the next.
-- Returns {id, lane index in KEYS[2..] (1-based), id, lane index, ...}, possibly empty;
--   with ARGV[4..5], {id, lane index, record fields, id, ...}.
local n = tonumber(ARGV[2] or '1')
local reversed = math.min(tonumber(ARGV[3] or '0'), n)
local lanes = #KEYS - 1
local out = {}
for _ = 1, reversed do
  for i = lanes, 1, -1 do
    local id = redis.call('LPOP', KEYS[i + 1])
    if id then
      redis.call('ZADD', KEYS[1], ARGV[1], id)
      out[#out + 1] = id
      out[#out + 1] = i
      break
    end
  end
end
local want = n - #out / 2
for i = 1, lanes do
  if want <= 0 then break end
  local ids = redis.call('LPOP', KEYS[i + 1], want)
  if ids then
    for _, id in ipairs(ids) do
      redis.call('ZADD', KEYS[1], ARGV[1], id)
      out[#out + 1] = id
      out[#out + 1] = i
    end
    want = want - #ids
  end
end
if ARGV[4] then
  local with = {}
  for i = 1, #out, 2 do
    with[#with + 1] = out[i]
    with[#with + 1] = out[i + 1]
    with[#with + 1] = redis.call('HGETALL', ARGV[4] .. out[i] .. ARGV[5])
  end
  return with
end
return out
