"""The Lua scripts behind AdmissionState (state.py): each runs atomically in Redis."""

from __future__ import annotations

COMMON = """
local P = 'adm:'
local function num(v) return tonumber(v) or 0 end
local function free_slot(key, now, cap, id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if cap <= 0 or redis.call('ZSCORE', key, id) then return true end
  return redis.call('ZCARD', key) < cap
end
local function trim(base, now, window)
  while true do
    local old = redis.call('ZRANGEBYSCORE', base, '-inf', now - window, 'LIMIT', 0, 500)
    if #old == 0 then break end
    local total = 0
    for _, m in ipairs(old) do total = total + num(redis.call('HGET', base .. ':w', m)) end
    redis.call('HDEL', base .. ':w', unpack(old))
    redis.call('ZREM', base, unpack(old))
    redis.call('INCRBY', base .. ':sum', -total)
  end
  return num(redis.call('GET', base .. ':sum'))
end
local function wait_for(base, now, window, need, limit)
  local used = trim(base, now, window)
  if used + need <= limit or redis.call('ZCARD', base) == 0 then return 0 end
  local entries = redis.call('ZRANGE', base, 0, -1, 'WITHSCORES')
  local freed = 0
  for i = 1, #entries, 2 do
    freed = freed + num(redis.call('HGET', base .. ':w', entries[i]))
    if used - freed + need <= limit then return math.max(1, num(entries[i + 1]) + window - now) end
  end
  return math.max(1, num(entries[#entries]) + window - now)
end
local function add(base, now, member, weight, window)
  redis.call('ZADD', base, now, member)
  redis.call('HSET', base .. ':w', member, weight)
  redis.call('INCRBY', base .. ':sum', weight)
  for _, k in ipairs({base, base .. ':w', base .. ':sum'}) do redis.call('PEXPIRE', k, window * 2) end
end
-- The rate part: 429 pause, requests and tokens per minute. Returns reason, wait_ms (nil: reserved).
local function rate(now, window, cred, rpm, tpm, member, est, commit)
  if cred == '' then return nil, 0 end
  local nb = num(redis.call('GET', P .. 'notbefore:' .. cred))
  if nb > now then return 'requests_per_minute', nb - now end
  if rpm > 0 then
    local w = wait_for(P .. 'rpm:' .. cred, now, window, 1, rpm)
    if w > 0 then return 'requests_per_minute', w end
  end
  if tpm > 0 then
    local w = wait_for(P .. 'tpm:' .. cred, now, window, est, tpm)
    if w > 0 then return 'tokens_per_minute', w end
  end
  if commit then
    if rpm > 0 then add(P .. 'rpm:' .. cred, now, member, 1, window) end
    if tpm > 0 then add(P .. 'tpm:' .. cred, now, member, est, window) end
  end
  return nil, 0
end
-- Everything an execution needs to start, taken all or nothing. it: id ws cred wscap credcap rpm tpm est lease
local function take(now, window, gcap, it)
  local g = P .. 'slots:global'
  if redis.call('ZSCORE', g, it.id) then return nil, 0 end
  local wk, ck = P .. 'slots:ws:' .. it.ws, P .. 'slots:cred:' .. it.cred
  if not free_slot(wk, now, num(it.wscap), it.id) then return 'workspace_concurrency', 0 end
  if it.cred ~= '' and not free_slot(ck, now, num(it.credcap), it.id) then return 'credential_concurrency', 0 end
  if not free_slot(g, now, gcap, it.id) then return 'capacity', 0 end
  local reason, wait = rate(now, window, it.cred, num(it.rpm), num(it.tpm), it.id, num(it.est), true)
  if reason then return reason, wait end
  local expiry = now + num(it.lease)
  redis.call('ZADD', g, expiry, it.id)
  redis.call('ZADD', wk, expiry, it.id)
  if it.cred ~= '' then redis.call('ZADD', ck, expiry, it.id) end
  local held = P .. 'held:' .. it.id
  redis.call('HSET', held, 'ws', it.ws, 'cred', it.cred, 'rpm', num(it.rpm), 'tpm', num(it.tpm), 'prepaid', it.id,
             'calls', 0)
  redis.call('PEXPIRE', held, num(it.lease) + 86400000)
  return nil, 0
end
local function item_of(id)
  local flat = redis.call('HGETALL', P .. 'item:' .. id)
  if #flat == 0 then return nil end
  local it = {}
  for i = 1, #flat, 2 do it[flat[i]] = flat[i + 1] end
  it.id = id
  return it
end
local function unqueue(id, ws)
  redis.call('DEL', P .. 'item:' .. id)
  redis.call('ZREM', P .. 'deadlines', id)
  redis.call('HDEL', P .. 'queued', id)
  if ws and redis.call('LLEN', P .. 'q:' .. ws) == 0 then
    redis.call('SREM', P .. 'ring:set', ws)
    redis.call('LREM', P .. 'ring', 0, ws)
  end
end
"""

# ARGV: now, window, global cap, item JSON. Joins its workspace's queue if that is not empty (FIFO per workspace).
ADMIT = COMMON + """
local now, window, gcap = num(ARGV[1]), num(ARGV[2]), num(ARGV[3])
local it = cjson.decode(ARGV[4])
local list = P .. 'q:' .. it.ws
local reason, wait
if redis.call('LLEN', list) > 0 then
  reason = redis.call('HGET', P .. 'item:' .. redis.call('LINDEX', list, 0), 'reason') or 'capacity'
else
  reason, wait = take(now, window, gcap, it)
  if not reason then return {'admitted', ''} end
end
local key = P .. 'item:' .. it.id
for k, v in pairs(it) do redis.call('HSET', key, k, tostring(v)) end
redis.call('HSET', key, 'reason', reason)
redis.call('RPUSH', list, it.id)
redis.call('ZADD', P .. 'deadlines', num(it.deadline), it.id)
redis.call('HSET', P .. 'queued', it.id, reason)
if redis.call('SADD', P .. 'ring:set', it.ws) == 1 then redis.call('RPUSH', P .. 'ring', it.ws) end
return {'queued', reason}
"""

# ARGV: now, window, global cap, at most this many. Round robin over the ring, one execution per workspace turn;
# stops at the first 'capacity' refusal or after a whole turn of refusals. Returns the ids now admitted.
DISPATCH = COMMON + """
local now, window, gcap, most = num(ARGV[1]), num(ARGV[2]), num(ARGV[3]), num(ARGV[4])
local out, fails = {}, 0
while #out < most and fails < redis.call('LLEN', P .. 'ring') do
  local ws = redis.call('LPOP', P .. 'ring')
  local list = P .. 'q:' .. ws
  local it = nil
  while not it do
    local id = redis.call('LINDEX', list, 0)
    if not id then break end
    it = item_of(id)
    if not it or redis.call('EXISTS', 'exec:' .. id .. ':terminal') == 1 then
      redis.call('LPOP', list)
      unqueue(id, nil)
      it = nil
    end
  end
  if not it then
    redis.call('SREM', P .. 'ring:set', ws)
  else
    local reason = take(now, window, gcap, it)
    if not reason then
      redis.call('LPOP', list)
      table.insert(out, it.id)
      redis.call('ZADD', P .. 'dispatching', now, it.id)
      redis.call('HSET', P .. 'dispatching:tasks', it.id, it.task_ids or '[]')
      unqueue(it.id, nil)
      fails = 0
    else
      redis.call('HSET', P .. 'item:' .. it.id, 'reason', reason)
      redis.call('HSET', P .. 'queued', it.id, reason)
      fails = fails + 1
    end
    if reason == 'capacity' then
      redis.call('LPUSH', P .. 'ring', ws)  -- its turn is not over: it goes first when capacity frees
      break
    end
    if redis.call('LLEN', list) > 0 then redis.call('RPUSH', P .. 'ring', ws)
    else redis.call('SREM', P .. 'ring:set', ws) end
  end
end
return out
"""

# ARGV: id, only if its execution ended (1|0). Frees its slots and forgets its reservation bookkeeping.
FINISH = COMMON + """
local id = ARGV[1]
if ARGV[2] == '1' and redis.call('EXISTS', 'exec:' .. id .. ':terminal') == 0 then return 0 end
local held = P .. 'held:' .. id
local ws, cred = unpack(redis.call('HMGET', held, 'ws', 'cred'))
redis.call('ZREM', P .. 'slots:global', id)
redis.call('ZREM', P .. 'dispatching', id)
redis.call('HDEL', P .. 'dispatching:tasks', id)
if ws then redis.call('ZREM', P .. 'slots:ws:' .. ws, id) end
if cred and cred ~= '' then redis.call('ZREM', P .. 'slots:cred:' .. cred, id) end
return redis.call('DEL', held)
"""

# The held executions whose terminal event exists (their slots are to be freed): the dispatcher's upkeep asked for
# every held id and then sent one EXISTS each, five times a second per worker process, 1,000 commands a pass at 1,000
# in flight (issue 12). Returns the ids.
ENDED_HELD = COMMON + """
local ended = {}
for _, id in ipairs(redis.call('ZRANGE', P .. 'slots:global', 0, -1)) do
  if redis.call('EXISTS', 'exec:' .. id .. ':terminal') == 1 then ended[#ended + 1] = id end
end
return ended
"""

# ARGV: now, window, id, est, slot expiry. A provider call's reservation: the first call uses the one taken at
# admission (re-stamped to now); later calls (retries, tool turns) reserve anew. Each call also extends the
# execution's slot leases. Returns {reservation, reason, wait_ms, credential, workspace}.
CALL = COMMON + """
local now, window, id, est = num(ARGV[1]), num(ARGV[2]), ARGV[3], num(ARGV[4])
local held = P .. 'held:' .. id
if redis.call('EXISTS', held) == 0 then return {'', '', 0, '', ''} end
local ws, cred, rpm, tpm, prepaid = unpack(redis.call('HMGET', held, 'ws', 'cred', 'rpm', 'tpm', 'prepaid'))
redis.call('ZADD', P .. 'slots:global', 'XX', 'GT', ARGV[5], id)
redis.call('ZADD', P .. 'slots:ws:' .. ws, 'XX', 'GT', ARGV[5], id)
if cred ~= '' then redis.call('ZADD', P .. 'slots:cred:' .. cred, 'XX', 'GT', ARGV[5], id) end
if prepaid and prepaid ~= '' then
  redis.call('HSET', held, 'prepaid', '')
  for _, base in ipairs({P .. 'rpm:' .. cred, P .. 'tpm:' .. cred}) do
    if redis.call('ZSCORE', base, prepaid) then redis.call('ZADD', base, now, prepaid) end
  end
  return {prepaid, '', 0, cred, ws}
end
local member = id .. ':' .. redis.call('HINCRBY', held, 'calls', 1)
local reason, wait = rate(now, window, cred, num(rpm), num(tpm), member, est, true)
if reason then return {'', reason, wait, cred, ws} end
return {member, '', 0, cred, ws}
"""

# ARGV: credential, reservation, actual tokens. The window counts what the provider really used.
CORRECT = """
local base = 'adm:tpm:' .. ARGV[1]
local old = redis.call('HGET', base .. ':w', ARGV[2])
if not old then return 0 end
local delta = tonumber(ARGV[3]) - tonumber(old)
redis.call('HSET', base .. ':w', ARGV[2], ARGV[3])
redis.call('INCRBY', base .. ':sum', delta)
return delta
"""

# ARGV: credential, not-before (ms). Only ever moves later.
PAUSE = """
local key = 'adm:notbefore:' .. ARGV[1]
local current = tonumber(redis.call('GET', key) or '0')
local wanted = tonumber(ARGV[2])
if wanted > current then redis.call('SET', key, wanted, 'PX', math.max(1, wanted - tonumber(ARGV[3])) + 1000) end
return math.max(wanted, current)
"""

# ARGV: now. Takes waiting executions past their wait deadline out of their queues; returns their ids.
EXPIRE = COMMON + """
local ids = redis.call('ZRANGEBYSCORE', P .. 'deadlines', '-inf', ARGV[1], 'LIMIT', 0, 200)
for _, id in ipairs(ids) do
  local ws = redis.call('HGET', P .. 'item:' .. id, 'ws')
  if ws then redis.call('LREM', P .. 'q:' .. ws, 1, id) end
  unqueue(id, ws)
end
return ids
"""
