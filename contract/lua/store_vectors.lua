-- Store a batch of vectors under their content keys, one command instead of a SET each. Plain SETs
-- of the same bytes: a chunk that runs twice writes the same thing.
-- KEYS    vector keys
-- ARGV[1] TTL in seconds; ARGV[2..] the encoded vectors, in the order of KEYS
-- Returns the number of vectors stored
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
end
return #KEYS
