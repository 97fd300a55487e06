-- Reserve: purge expired holds, check every scope, then hold the request in all of them.
-- Runs atomically in Redis, so concurrent reservations from any number of gateway
-- processes see each other (no check-then-record race).
--
-- ARGV: prefix, hold_id, now_ms, ttl_ms, minute, day, month, tokens, cost_nusd, then
--       per scope two: its id, and its limits "rpm tpm concurrency budget_daily
--       budget_monthly budget_total" in one string (-1 = unlimited). Few arguments and
--       one string reply keep the round trip cheap.
-- Returns "1 state... seeded" when admitted (counters after the reservation), or
--         "0 scope_index kind_index state... seeded" when refused (counters before).
-- seeded is 0 when the seed marker is missing: Redis lost its data (or is new) and the
-- gateway should put the ledger's spend back (seed.lua). The marker is P .. 'seeded'
-- (standalone, no KEYS), or on Redis Cluster each scope's own, passed as KEYS (which
-- also route the script to the scopes' slot).
-- A state is 7 integers per scope: requests, tokens, in_flight, spend_day, spend_month,
-- spend_total, held. kind_index follows gateway.quotas.limits.KINDS.
local P = ARGV[1]
local hold = ARGV[2]
local now = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local minute, day, month = ARGV[5], ARGV[6], ARGV[7]
local tokens, cost = tonumber(ARGV[8]), tonumber(ARGV[9])
local n = (#ARGV - 9) / 2

local WINDOW_TTL, DAY_TTL, MONTH_TTL = 120, 3 * 86400, 70 * 86400
local PURGE_MAX = 64
-- Per kind, in KINDS order (total, monthly, daily, concurrency, rpm, tpm): the position
-- of its limit in a scope's limit string and the index of its counter in a state.
local KIND_LIMIT = {6, 5, 4, 3, 1, 2}
local KIND_STATE = {6, 5, 4, 3, 1, 2}

local function key(s, suffix) return P .. '{' .. s .. '}:' .. suffix end
local function int(x) return string.format('%d', x) end

local function adjust(k, delta)
  -- Only windows that still exist: an expired window must not come back negative.
  if delta ~= 0 and redis.call('EXISTS', k) == 1 then redis.call('INCRBY', k, int(delta)) end
end

local function purge(s)
  local inf, holds = key(s, 'inf'), key(s, 'holds')
  local expired = redis.call('ZRANGEBYSCORE', inf, '-inf', now, 'LIMIT', 0, PURGE_MAX)
  for _, h in ipairs(expired) do
    local rec = redis.call('HGET', holds, h)
    if rec then
      local t, c, mi, d, mo = string.match(rec, '^(%-?%d+):(%-?%d+):(%d+):(%d+):(%d+)$')
      c = tonumber(c)
      adjust(key(s, 'tpm:' .. mi), -tonumber(t))
      adjust(key(s, 'sd:' .. d), -c)
      adjust(key(s, 'sm:' .. mo), -c)
      redis.call('INCRBY', key(s, 'st'), int(-c))
      redis.call('INCRBY', key(s, 'held'), int(-c))
      redis.call('HDEL', holds, h)
    end
    redis.call('ZREM', inf, h)
  end
end

local function state(s)
  local v = redis.call('MGET', key(s, 'rpm:' .. minute), key(s, 'tpm:' .. minute),
    key(s, 'sd:' .. day), key(s, 'sm:' .. month), key(s, 'st'), key(s, 'held'))
  return {tonumber(v[1]) or 0, tonumber(v[2]) or 0, redis.call('ZCARD', key(s, 'inf')),
          tonumber(v[3]) or 0, tonumber(v[4]) or 0, tonumber(v[5]) or 0, tonumber(v[6]) or 0}
end

local seeded = 1
if #KEYS == 0 then
  seeded = redis.call('EXISTS', P .. 'seeded')
else
  for _, marker in ipairs(KEYS) do
    if redis.call('EXISTS', marker) == 0 then seeded = 0 end
  end
end

local function reply(head, states)
  local out = head
  for j = 1, n do
    for x = 1, 7 do out[#out + 1] = int(states[j][x]) end
  end
  out[#out + 1] = int(seeded)
  return table.concat(out, ' ')
end

local ids, limits, states = {}, {}, {}
for i = 1, n do
  ids[i] = ARGV[8 + 2 * i]
  local l = {}
  for v in string.gmatch(ARGV[9 + 2 * i], '%-?%d+') do l[#l + 1] = tonumber(v) end
  limits[i] = l
  purge(ids[i])
  states[i] = state(ids[i])
end

for i = 1, n do
  local st = states[i]
  for k = 1, 6 do
    local limit = limits[i][KIND_LIMIT[k]]
    if limit >= 0 then
      local used = st[KIND_STATE[k]]
      local bad
      if k <= 3 then
        bad = used >= limit or used + cost > limit
      elseif k == 6 then
        bad = used + tokens > limit
      else
        bad = used + 1 > limit
      end
      if bad then return reply({'0', int(i), int(k)}, states) end
    end
  end
end

local rec = ARGV[8] .. ':' .. ARGV[9] .. ':' .. minute .. ':' .. day .. ':' .. month
-- A window gets its expiry when it is created (an INCR that returns the increment).
local function add(k, v, ttl_s)
  if redis.call('INCRBY', k, v) == tonumber(v) then redis.call('EXPIRE', k, ttl_s) end
end
for i = 1, n do
  local s = ids[i]
  add(key(s, 'rpm:' .. minute), '1', WINDOW_TTL)
  add(key(s, 'tpm:' .. minute), ARGV[8], WINDOW_TTL)
  add(key(s, 'sd:' .. day), ARGV[9], DAY_TTL)
  add(key(s, 'sm:' .. month), ARGV[9], MONTH_TTL)
  redis.call('INCRBY', key(s, 'st'), ARGV[9])
  redis.call('INCRBY', key(s, 'held'), ARGV[9])
  -- No expiry on these two: settle or purge removes each hold, and Redis deletes a
  -- sorted set or hash when its last member goes.
  redis.call('ZADD', key(s, 'inf'), now + ttl, hold)
  redis.call('HSET', key(s, 'holds'), hold, rec)
  local st = states[i]
  st[1], st[2], st[3] = st[1] + 1, st[2] + tokens, st[3] + 1
  st[4], st[5], st[6], st[7] = st[4] + cost, st[5] + cost, st[6] + cost, st[7] + cost
end
return reply({'1'}, states)
