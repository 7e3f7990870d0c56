#!lua flags=no-writes
-- The live builds of a model: those with a node whose heartbeat has not run out (Redis' clock).
-- KEYS[1] sorted set of the model's builds (fingerprint -> when first advertised)
-- ARGV[1] key prefix of a build's advert (the advert is <prefix><fingerprint>, its nodes
--         <prefix><fingerprint>:nodes)   ARGV[2] key prefix of a node's entry (<prefix><node>)
-- Returns, newest build first, eight fields per live build: fingerprint, artifact fingerprint,
--   dims, first advertised (seconds), live nodes, live processes, artifact name, max tokens
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local builds = redis.call('ZREVRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local live = {}
for i = 1, #builds, 2 do
  local advert = ARGV[1] .. builds[i]
  local nodes = redis.call('ZRANGEBYSCORE', advert .. ':nodes', now, '+inf')
  local fields = redis.call('HMGET', advert, 'artifact', 'dims', 'name', 'max_tokens')
  if #nodes > 0 and fields[2] then
    local processes = 0
    for _, node in ipairs(nodes) do
      processes = processes + tonumber(redis.call('HGET', ARGV[2] .. node, 'processes') or '0')
    end
    local row = {builds[i], fields[1] or '', fields[2], builds[i + 1], #nodes, processes, fields[3] or '', fields[4] or '0'}
    for _, value in ipairs(row) do
      table.insert(live, tostring(value))
    end
  end
end
return live
