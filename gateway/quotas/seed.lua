-- Seed: put back the spend the ledger knows after Redis lost the quota data (a restart
-- without persistence, a flush, a new Redis), once for all gateway processes.
--
-- ARGV: prefix, day, month, stamp, then per scope four: its id, and its nano-USD spend
--       today, this month and in total.
-- Returns 1 when this call seeded, 0 when the marker shows another call did.
-- KEYS: none on a standalone Redis (one marker, P .. 'seeded', for everything); on Redis
--       Cluster the marker of each scope given (P{scope}:seeded, in the scope's slot),
--       one per scope in ARGV order, each guarding its own scope.
--
-- Amounts are added to what is there: requests that reached Redis after the loss and
-- before the seed may be counted twice (a budget errs on the safe side; the ledger,
-- not Redis, is what is billed).
local P = ARGV[1]
local day, month = ARGV[2], ARGV[3]
local DAY_TTL, MONTH_TTL = 3 * 86400, 70 * 86400

if #KEYS == 0 and not redis.call('SET', P .. 'seeded', ARGV[4], 'NX') then return 0 end
local seeded = 0

local function add(k, v, ttl_s)
  if v == '0' then return end
  if redis.call('INCRBY', k, v) == tonumber(v) and ttl_s then redis.call('EXPIRE', k, ttl_s) end
end

for i = 5, #ARGV, 4 do
  local marker = KEYS[(i - 1) / 4]
  if not marker or redis.call('SET', marker, ARGV[4], 'NX') then
    local b = P .. '{' .. ARGV[i] .. '}:'
    add(b .. 'sd:' .. day, ARGV[i + 1], DAY_TTL)
    add(b .. 'sm:' .. month, ARGV[i + 2], MONTH_TTL)
    add(b .. 'st', ARGV[i + 3], nil)
    seeded = 1
  end
end
if #KEYS == 0 then return 1 end
return seeded
