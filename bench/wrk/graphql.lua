-- The seed's GraphQL query, verbatim, over the ids listed one per line in $BAZAAR_IDS.
local ids = {}
for line in io.lines(os.getenv("BAZAAR_IDS")) do ids[#ids + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #ids + 1
  local body = '{"query":"query { product(id: \\"' .. ids[i] ..
    '\\") { id name price variants { id color size price stockLevel } } }"}'
  return wrk.format(nil, "/graphql", nil, body)
end
