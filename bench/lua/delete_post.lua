-- DELETE /posts/{id} by the post's author, each id once. args[1]: a file of "<token> <post id>"
-- lines; args[2]: the number of threads, which share the lines out by `index`. When a thread runs
-- out it counts `exhausted` and repeats its last delete (a 404, so an error in the figures).
local items = {}
local position = 0
exhausted = 0

function init(args)
  local threads = tonumber(args[2])
  local line_number = 0
  for line in io.lines(args[1]) do
    if line_number % threads == index then
      local token, id = line:match("^(%S+) (%S+)$")
      table.insert(items, { token = token, id = id })
    end
    line_number = line_number + 1
  end
end

function request()
  position = position + 1
  local item = items[position]
  if item == nil then
    exhausted = exhausted + 1
    item = items[#items] or { token = "none", id = "00000000-0000-0000-0000-000000000000" }
  end
  return wrk.format("DELETE", "/posts/" .. item.id, { ["Authorization"] = "Bearer " .. item.token })
end
