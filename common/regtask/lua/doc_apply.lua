-- Atomically apply a list of operations to the JSON document stored in a hash field.
--
-- KEYS[1]  the hash key
-- ARGV[1]  JSON spec: {field, ops, init, ttl, fields, init_fields, publish, nonce, return_doc,
--          delete}: with delete, the key is removed once every guard has passed.
--
-- Redis' cjson cannot tell "[]" from "{}". Before decoding, every "[]" becomes "[N]" where N is
-- a random per-call integer: valid JSON both as structure (a one-element array, recognised below
-- as empty) and inside string literals (plain text). After encoding, every "[N]" is turned back
-- into "[]", so documents and strings keep their exact bytes. Two C-speed gsubs, no Lua scan.
--
-- Returns {code, detail}: code is "ok", "missing", "guard" or "malformed"; on "ok" detail is
-- the new document (when asked) or "".

local spec = cjson.decode(ARGV[1])
local nonce = spec.nonce
local marked = '[' .. nonce .. ']'
local marked_pattern = '%[' .. string.gsub(tostring(nonce), '%-', '%%-') .. '%]'

local function decode(text)
  return cjson.decode((string.gsub(text, '%[%]', marked)))
end

local function is_empty_array(v)
  return type(v) == 'table' and v[1] == nonce and v[2] == nil
end

local field = spec.field
local raw = redis.call('HGET', KEYS[1], field)
if spec.delete and not raw then
  return {'missing', ''}
end
local doc
if not raw then
  if spec.init == nil or spec.init == cjson.null then
    return {'missing', ''}
  end
  doc = decode(spec.init)
else
  local ok, decoded = pcall(decode, raw)
  if not ok or type(decoded) ~= 'table' or decoded[1] ~= nil then
    return {'malformed', 'stored document is not a JSON object'}
  end
  doc = decoded
end

local ops = decode(spec.ops)
if is_empty_array(ops) then ops = {} end

-- Walk to the parent table of the last path element; create missing objects when asked.
local function parent_of(path, create)
  local node = doc
  for i = 1, #path - 1 do
    local k = path[i]
    local child = node[k]
    if child == nil or child == cjson.null then
      if not create then return nil end
      child = {}
      node[k] = child
    elseif type(child) ~= 'table' then
      error({malformed = table.concat(path, '.', 1, i) .. ' is not an object'})
    end
    node = child
  end
  return node
end

local function array_at(parent, k, path)
  local arr = parent[k]
  if arr == nil or arr == cjson.null or is_empty_array(arr) then
    return {}
  end
  if type(arr) ~= 'table' then
    error({malformed = table.concat(path, '.') .. ' is not an array'})
  end
  return arr
end

local function store_array(parent, k, arr)
  if #arr == 0 then parent[k] = {nonce} else parent[k] = arr end
end

local function apply(op)
  local path = op.path
  local last = path[#path]
  if op.op == 'set' then
    parent_of(path, true)[last] = op.value
  elseif op.op == 'default' then
    local parent = parent_of(path, true)
    if parent[last] == nil or parent[last] == cjson.null then parent[last] = op.value end
  elseif op.op == 'del' then
    local parent = parent_of(path, false)
    if parent then parent[last] = nil end
  elseif op.op == 'add' then
    local parent = parent_of(path, true)
    local arr = array_at(parent, last, path)
    local present = false
    for i = 1, #arr do
      if arr[i] == op.value then present = true break end
    end
    if not present then
      arr[#arr + 1] = op.value
      local cap = op.cap
      if cap and cap ~= cjson.null and #arr > cap then
        local trimmed = {}
        for i = #arr - cap + 1, #arr do trimmed[#trimmed + 1] = arr[i] end
        arr = trimmed
      end
    end
    store_array(parent, last, arr)
  elseif op.op == 'remove' then
    local parent = parent_of(path, false)
    if parent then
      local arr = array_at(parent, last, path)
      local kept = {}
      for i = 1, #arr do
        if arr[i] ~= op.value then kept[#kept + 1] = arr[i] end
      end
      store_array(parent, last, kept)
    end
  elseif op.op == 'guard' then
    local parent = parent_of(path, false)
    local current = parent and parent[last]
    if op.none_of then
      for i = 1, #op.none_of do
        if current == op.none_of[i] then error({guard = true}) end
      end
    end
    if op.exists and (current == nil or current == cjson.null) then
      error({guard = true})
    end
    if op.equals ~= nil and current ~= op.equals then
      error({guard = true})
    end
  else
    error({malformed = 'unknown op ' .. tostring(op.op)})
  end
end

for i = 1, #ops do
  local ok, err = pcall(apply, ops[i])
  if not ok then
    if type(err) == 'table' and err.guard then return {'guard', ''} end
    if type(err) == 'table' and err.malformed then return {'malformed', err.malformed} end
    return {'malformed', tostring(err)}
  end
end

if spec.delete then
  redis.call('DEL', KEYS[1])
  if spec.publish and spec.publish ~= cjson.null then
    redis.call('PUBLISH', spec.publish[1], spec.publish[2])
  end
  return {'ok', ''}
end

local created = (raw == false or raw == nil)
local encoded = string.gsub(cjson.encode(doc), marked_pattern, '[]')
local hset = {KEYS[1], field, encoded}
if spec.fields and spec.fields ~= cjson.null then
  for k, v in pairs(spec.fields) do
    hset[#hset + 1] = k
    hset[#hset + 1] = tostring(v)
  end
end
if created and spec.init_fields and spec.init_fields ~= cjson.null then
  for k, v in pairs(spec.init_fields) do
    hset[#hset + 1] = k
    hset[#hset + 1] = tostring(v)
  end
end
redis.call('HSET', unpack(hset))
if spec.ttl and spec.ttl ~= cjson.null and spec.ttl > 0 then
  redis.call('EXPIRE', KEYS[1], spec.ttl)
end
if spec.publish and spec.publish ~= cjson.null then
  redis.call('PUBLISH', spec.publish[1], spec.publish[2])
end
if spec.return_doc then return {'ok', encoded} end
return {'ok', ''}
