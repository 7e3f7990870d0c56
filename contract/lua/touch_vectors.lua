-- Which vectors exist, each hit's TTL renewed so it stays cached: one EXPIRE per key, one command.
-- KEYS   vector keys (a batch of a job's or a chunk's digests)
-- ARGV[1] TTL in seconds
-- Returns a string with one character per key: '1' exists (TTL renewed), '0' missing
local flags = {}
for i, key in ipairs(KEYS) do
  flags[i] = redis.call('EXPIRE', key, ARGV[1]) == 1 and '1' or '0'
end
return table.concat(flags)
