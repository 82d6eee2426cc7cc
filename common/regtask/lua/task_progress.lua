-- The hot path: one progress update of a live task, and its event, in one round trip.
--
-- KEYS[1]  registry:task:{task_id}
-- ARGV     status, progress, current_step, ttl, channel, message, estimated_completion ('' =
--          unchanged), nonce, the waiting task's place as JSON {queue_position, estimated_start}
--          ('' = not waiting: both removed), the step entry to record (JSON; '' = none),
--          the history's cap, its count field, its ring field prefix, then the terminal
--          statuses (a finished task is left alone)
--
-- Returns 1 applied, 0 left alone (finished), -1 missing, -2 malformed (nothing written).
-- Same empty-array care as doc_apply.lua, skipped when the document holds no "[]".

local raw = redis.call('HGET', KEYS[1], 'data')
if not raw then return -1 end
local marked = nil
if string.find(raw, '[]', 1, true) then
  marked = '[' .. ARGV[8] .. ']'
  raw = string.gsub(raw, '%[%]', marked)
end
local ok, doc = pcall(cjson.decode, raw)
if not ok or type(doc) ~= 'table' or type(doc.task_info) ~= 'table'
    or type(doc.progress) ~= 'table' then
  return -2
end
local current = doc.task_info.status
for i = 14, #ARGV do
  if current == ARGV[i] then return 0 end
end
doc.task_info.status = ARGV[1]
doc.progress.progress_percent = tonumber(ARGV[2])
doc.progress.current_step = ARGV[3]
if ARGV[7] ~= '' then doc.progress.estimated_completion = ARGV[7] end
if ARGV[9] ~= '' then
  local place = cjson.decode(ARGV[9])
  doc.progress.queue_position = place.queue_position
  doc.progress.estimated_start = place.estimated_start
else
  doc.progress.queue_position = nil
  doc.progress.estimated_start = nil
end
local out = cjson.encode(doc)
if marked then
  out = string.gsub(out, '%[' .. string.gsub(ARGV[8], '%-', '%%-') .. '%]', '[]')
end
redis.call('HSET', KEYS[1], 'data', out)
if ARGV[10] ~= '' then
  -- The step history: a ring of ARGV[11] fields in the same hash, so it shares the TTL.
  local n = redis.call('HINCRBY', KEYS[1], ARGV[12], 1)
  redis.call('HSET', KEYS[1], ARGV[13] .. ((n - 1) % tonumber(ARGV[11])), ARGV[10])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
