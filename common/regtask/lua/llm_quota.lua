-- A company's LLM quota as one sliding log (regtask.ratelimit): every call is a member of a
-- sorted set scored by its time in microseconds, its tokens in a hash beside it, with running
-- totals, so each call costs O(log n) plus the entries that leave the window (each leaves once).
--
-- KEYS[1] calls: sorted set, member = call id (unique per call), score = time (us)
-- KEYS[2] tokens: hash, call id -> tokens (reserved, then settled), and the running totals
--         '~hour' (calls with score > '~cut'), '~day' (every call in the set), '~cut' (us)
-- ARGV[1] op: 'reserve' | 'settle' | 'refund' | 'peek'
-- ARGV[2] now in us, '' = the server's clock (redis TIME: the one clock every replica shares;
--         tests pass their own, nothing else should)
-- reserve: ARGV[3] call id, [4] tokens, [5] requests/hour, [6] tokens/hour, [7] tokens/day
--          (-1 = no limit), [8] retention (us: how long calls are kept, an hour or a day)
--   -> {allowed, requests, tokens_hour, tokens_day, wait_us (-1 = never fits), exceeded,
--       reset_us (until the oldest call of the hour leaves)}
-- settle:  ARGV[3] call id, [4] real tokens
-- refund:  ARGV[3] call id
--   -> {0} when the call has left the log, else {1, requests, tokens_hour, tokens_day, reset_us}
-- peek:    ARGV[3] retention -> {requests, tokens_hour, tokens_day, reset_us}; writes nothing
--
-- Hazard: the window is (now - 1 h, now]: a call made at t counts until t + 1 h exclusive.
-- Times are assumed not to go backwards (TIME on one primary does not).

local HOUR = 3600000000
local DAY = 24 * HOUR
local calls, tokens = KEYS[1], KEYS[2]
local op = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Lua's own number-to-string keeps 14 digits: every bound given to Redis goes through here.
local function us(x)
  return string.format('%.0f', x)
end

local function amounts(ids)
  local sum = 0
  if #ids == 0 then return 0 end
  local values = redis.call('HMGET', tokens, unpack(ids))
  for i = 1, #values do sum = sum + (tonumber(values[i]) or 0) end
  return sum
end

-- Sum of the tokens of calls with min < score <= max ('(' exclusive bounds given as strings).
local function sum_between(min, max)
  local sum, offset = 0, 0
  while true do
    local ids = redis.call('ZRANGEBYSCORE', calls, min, max, 'LIMIT', offset, 500)
    sum = sum + amounts(ids)
    if #ids < 500 then return sum end
    offset = offset + 500
  end
end

local function totals()
  return tonumber(redis.call('HGET', tokens, '~hour') or '0'),
    tonumber(redis.call('HGET', tokens, '~day') or '0'),
    tonumber(redis.call('HGET', tokens, '~cut') or '-1')
end

-- Microseconds until the oldest call of the hour leaves it (0: none in it).
local function reset_us()
  local first = redis.call('ZRANGEBYSCORE', calls, '(' .. us(now - HOUR), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #first == 0 then return 0 end
  return tonumber(first[2]) + HOUR - now
end

-- Move the hour's cut to now - 1 h (its leavers out of '~hour'), drop calls older than the
-- retention (out of '~day').
local function advance(retention)
  local hour, day, cut = totals()
  local newcut = now - HOUR
  if newcut > cut then
    local low = cut < 0 and '-inf' or '(' .. us(cut)
    hour = hour - sum_between(low, us(newcut))
    redis.call('HSET', tokens, '~hour', us(hour), '~cut', us(newcut))
  end
  local horizon = now - retention
  while true do
    local old = redis.call('ZRANGEBYSCORE', calls, '-inf', us(horizon), 'LIMIT', 0, 500)
    if #old == 0 then break end
    day = day - amounts(old)
    redis.call('HDEL', tokens, unpack(old))
    redis.call('ZREM', calls, unpack(old))
  end
  redis.call('HSET', tokens, '~day', us(day))
  return hour, day
end

-- The earliest wait (us) after which the calls of the last `span` holding `need` tokens (or,
-- with need_calls, that many calls) have left; -1 when never.
local function wait_for(span, need, by_calls)
  local offset, freed = 0, 0
  while true do
    local rows = redis.call('ZRANGEBYSCORE', calls, '(' .. us(now - span), '+inf', 'WITHSCORES', 'LIMIT', offset, 500)
    if #rows == 0 then return -1 end
    local ids = {}
    for i = 1, #rows, 2 do ids[#ids + 1] = rows[i] end
    local values = by_calls and {} or redis.call('HMGET', tokens, unpack(ids))
    for i = 1, #ids do
      freed = freed + (by_calls and 1 or (tonumber(values[i]) or 0))
      if freed >= need then return tonumber(rows[2 * i]) + span - now end
    end
    offset = offset + 500
  end
end

if op == 'reserve' then
  local id, want = ARGV[3], tonumber(ARGV[4])
  local max_requests, max_hour, max_day = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local hour, day = advance(tonumber(ARGV[8]))
  local count = redis.call('ZCOUNT', calls, '(' .. us(now - HOUR), '+inf')
  local wait, exceeded = 0, ''
  -- The binding limit: the one that never fits, else the one that frees last.
  local function over(name, w)
    if exceeded ~= '' and (wait < 0 or (w >= 0 and w <= wait)) then return end
    wait, exceeded = w, name
  end
  if max_requests >= 0 and count + 1 > max_requests then
    over('requests_per_hour', max_requests == 0 and -1 or wait_for(HOUR, count + 1 - max_requests, true))
  end
  if max_hour >= 0 and hour + want > max_hour then
    over('tokens_per_hour', want > max_hour and -1 or wait_for(HOUR, hour + want - max_hour, false))
  end
  if max_day >= 0 and day + want > max_day then
    over('tokens_per_day', want > max_day and -1 or wait_for(DAY, day + want - max_day, false))
  end
  if exceeded ~= '' then
    return {0, count, hour, day, wait, exceeded, reset_us()}
  end
  redis.call('ZADD', calls, us(now), id)
  redis.call('HSET', tokens, id, us(want), '~hour', us(hour + want), '~day', us(day + want))
  local ttl = us(math.ceil(tonumber(ARGV[8]) / 1000))
  redis.call('PEXPIRE', calls, ttl)
  redis.call('PEXPIRE', tokens, ttl)
  return {1, count + 1, hour + want, day + want, 0, '', reset_us()}
end

if op == 'settle' or op == 'refund' then
  local id = ARGV[3]
  local held = redis.call('HGET', tokens, id)
  local score = redis.call('ZSCORE', calls, id)
  if not held or not score then return {0} end
  local hour, day, cut = totals()
  local delta
  if op == 'settle' then
    delta = tonumber(ARGV[4]) - tonumber(held)
    redis.call('HSET', tokens, id, us(tonumber(ARGV[4])))
  else
    delta = -tonumber(held)
    redis.call('HDEL', tokens, id)
    redis.call('ZREM', calls, id)
  end
  redis.call('HSET', tokens, '~day', us(day + delta))
  if tonumber(score) > cut then
    hour = hour + delta
    redis.call('HSET', tokens, '~hour', us(hour))
  end
  return {1, redis.call('ZCOUNT', calls, '(' .. us(now - HOUR), '+inf'), hour, day + delta, reset_us()}
end

if op == 'peek' then
  local hour, day, cut = totals()
  local newcut = now - HOUR
  if newcut > cut then
    hour = hour - sum_between(cut < 0 and '-inf' or '(' .. us(cut), us(newcut))
  end
  local horizon = now - tonumber(ARGV[3])
  day = day - sum_between('-inf', us(horizon))
  local count = redis.call('ZCOUNT', calls, '(' .. us(now - HOUR), '+inf')
  return {count, hour, day, reset_us()}
end

return redis.error_reply('llm_quota: unknown op ' .. tostring(op))
