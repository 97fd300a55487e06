-- Settle: replace a hold by the actual usage, once, in every scope.
--
-- ARGV: prefix, hold_id, mode, tokens, cost_nusd, day, month (the windows in which the
--       request ended), marker_ttl_ms, then the scope ids.
-- mode "1" (held): the reservation was made in Redis. Each scope's hold is released and
--   the actual cost charged to the current day and month; a hold already gone (settled
--   before, or expired and purged) is skipped, which makes a replay harmless.
-- mode "2" (cancel): as "1" with no usage, and the request leaves the rate window too.
--   Used to undo a reservation admitted in some scopes and refused in others, when the
--   scopes live in different Redis Cluster slots (see redis.py).
-- mode "0" (unheld): the reservation was made while Redis was unreachable. The actual
--   cost is charged once per scope, guarded by a marker key per scope named after the
--   hold (in the scope's slot, for Redis Cluster).
-- KEYS are not read: on Redis Cluster one of the scopes' keys routes the script.
-- Returns the number of scopes charged.
local P = ARGV[1]
local hold = ARGV[2]
local tokens, cost = tonumber(ARGV[4]), tonumber(ARGV[5])
local day, month = ARGV[6], ARGV[7]
local n = #ARGV - 8

local DAY_TTL, MONTH_TTL = 3 * 86400, 70 * 86400

local function key(s, suffix) return P .. '{' .. s .. '}:' .. suffix end
local function int(x) return string.format('%d', x) end

local function adjust(k, delta)
  if delta ~= 0 and redis.call('EXISTS', k) == 1 then redis.call('INCRBY', k, int(delta)) end
end

local function add(k, v, ttl_s)
  if redis.call('INCRBY', k, v) == tonumber(v) then redis.call('EXPIRE', k, ttl_s) end
end

local function charge(s)
  if cost == 0 then return end
  add(key(s, 'sd:' .. day), ARGV[5], DAY_TTL)
  add(key(s, 'sm:' .. month), ARGV[5], MONTH_TTL)
  redis.call('INCRBY', key(s, 'st'), ARGV[5])
end

local charged = 0
if ARGV[3] ~= '0' then
  for i = 1, n do
    local s = ARGV[8 + i]
    local holds = key(s, 'holds')
    local rec = redis.call('HGET', holds, hold)
    if rec then
      local t, c, mi, d, mo = string.match(rec, '^(%-?%d+):(%-?%d+):(%d+):(%d+):(%d+)$')
      c = tonumber(c)
      adjust(key(s, 'tpm:' .. mi), tokens - tonumber(t))
      if ARGV[3] == '2' then adjust(key(s, 'rpm:' .. mi), -1) end
      -- The hold's cost leaves the windows it was reserved in; the actual cost goes to
      -- the windows of now (the ledger bills at finish time). Same window: one INCRBY.
      if d == day then
        adjust(key(s, 'sd:' .. d), cost - c)
      else
        adjust(key(s, 'sd:' .. d), -c)
        if cost ~= 0 then add(key(s, 'sd:' .. day), ARGV[5], DAY_TTL) end
      end
      if mo == month then
        adjust(key(s, 'sm:' .. mo), cost - c)
      else
        adjust(key(s, 'sm:' .. mo), -c)
        if cost ~= 0 then add(key(s, 'sm:' .. month), ARGV[5], MONTH_TTL) end
      end
      if cost ~= c then redis.call('INCRBY', key(s, 'st'), int(cost - c)) end
      if c ~= 0 then redis.call('INCRBY', key(s, 'held'), int(-c)) end
      redis.call('HDEL', holds, hold)
      redis.call('ZREM', key(s, 'inf'), hold)
      charged = charged + 1
    end
  end
  return charged
end

for i = 1, n do
  local s = ARGV[8 + i]
  if redis.call('SET', key(s, 'done:' .. hold), '1', 'NX', 'PX', ARGV[8]) then
    charge(s)
    charged = charged + 1
  end
end
return charged
