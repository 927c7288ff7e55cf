ardour {
	["type"]    = "EditorAction",
	name        = "Backline: accompany region",
	license     = "MIT",
	author      = "Backline",
	description = [[Sends the selected MIDI region's notes to Backline (a running `backline serve`) and adds the band's accompaniment: one MIDI track per instrument, named after it (made if missing), each with a new region at the melody region's position and length, the model's program and MIDI channel. One Edit > Undo takes the regions away again. Install or update with: backline ardour install]]
}

-- Installed by `backline ardour install`, which writes the absolute path of the backline
-- command into the default of "backline" below. Tested with Ardour 7.3.

function action_params ()
	return {
		["backline"]   = { title = "The backline command (absolute path)", default = "backline" --[[backline-path]] },
		["model"]      = { title = "Model (empty: the bridge's)", default = "", optional = true },
		["seed"]       = { title = "Seed (same seed, same accompaniment)", default = "0" },
		["threshold"]  = { title = "Note threshold in (0, 1), lower = busier (empty: the model's)", default = "", optional = true },
		["port"]       = { title = "UDP port of backline serve", default = "11010" },
	}
end

-- Everything lives inside factory(): Ardour keeps an action as string.dump (factory) and
-- its parameters, so nothing at the top level of this file exists when the action runs.
function factory (params)
	local P = params or {}
	local PPQN = 1920 -- Temporal::ticks_per_beat: Ardour 7's Beats are ticks, 1920 per quarter note
	local WINDOWS = package.config:sub (1, 1) == "\\"
	local FORMAT_VERSION = 1 -- of `backline send-notes`' output (docs/DAW.md)
	local TITLE = "Backline"

	-- a parameter's value, trimmed; default when it is unset, or empty and not `optional`
	local function param (key, default, optional)
		local v = P[key]
		if v == nil then return default end
		v = tostring (v):match ("^%s*(.-)%s*$")
		if v == "" and not optional then return default end
		return v
	end

	-- Temporal.Beats <-> quarter notes. Ardour 7.3's Lua has no to_ticks (); str () is "beats:ticks".
	local function beats_num (b)
		local B, T = b:str ():match ("^(-?%d+):(-?%d+)$")
		return tonumber (B) + tonumber (T) / PPQN
	end
	local function num_beats (x)
		return Temporal.Beats (0, math.floor (x * PPQN + 0.5))
	end
	-- %f follows the C locale's decimal point, which the GUI may have set to a comma
	local function decimal (x)
		return (string.format ("%.6f", x):gsub (",", "."))
	end

	local function quote (s)
		if WINDOWS then return '"' .. (s:gsub ('"', '""')) .. '"' end
		return "'" .. (s:gsub ("'", "'\\''")) .. "'"
	end
	local function tmpname ()
		if WINDOWS then
			return string.format ("%s\\backline-%d-%d.txt", os.getenv ("TEMP") or os.getenv ("TMP") or ".",
				os.time (), math.random (1, 1000000000))
		end
		return os.tmpname ()
	end
	local function slurp (path)
		local f = io.open (path, "rb")
		if not f then return "" end
		local s = f:read ("a") or ""
		f:close ()
		return s
	end
	local function trim (s) return (s:gsub ("^%s+", ""):gsub ("%s+$", "")) end

	-- `backline send-notes` output (format 1) -> ordered list of tracks, or nil, error
	local function parse_reply (out)
		local lines = {}
		for line in out:gmatch ("[^\r\n]+") do lines[#lines + 1] = line end
		local version = lines[1] and lines[1]:match ("^backline%-notes (%d+)%s*$")
		if not version then
			return nil, "backline send-notes printed something unexpected: " .. (lines[1] or "(nothing)")
		end
		if tonumber (version) ~= FORMAT_VERSION then
			return nil, string.format ("backline send-notes speaks format %s, this script reads %d: run "
				.. "`backline ardour install` again and re-add the action", version, FORMAT_VERSION)
		end
		local tracks, by_index, count, ended = {}, {}, 0, nil
		for i = 2, #lines do
			local line = lines[i]
			local word = line:match ("^(%S+)")
			if word == "track" then
				local idx, program, channel, drum, name = line:match ("^track (%d+) (%d+) (%d+) ([01]) (.-)%s*$")
				if not idx or name == "" then return nil, "bad line from backline send-notes: " .. line end
				local t = { name = name, program = tonumber (program), channel = tonumber (channel),
				            drum = drum == "1", notes = {} }
				if t.program > 127 or t.channel > 15 then return nil, "bad line from backline send-notes: " .. line end
				by_index[tonumber (idx)] = t
				tracks[#tracks + 1] = t
			elseif word == "note" then
				local idx, pitch, start, len, vel = line:match ("^note (%d+) (%d+) (%S+) (%S+) (%d+)%s*$")
				local t = idx and by_index[tonumber (idx)]
				start, len = tonumber (start), tonumber (len)
				if not t or not start or not len then return nil, "bad line from backline send-notes: " .. line end
				t.notes[#t.notes + 1] = { pitch = tonumber (pitch), start = start, len = len, vel = tonumber (vel) }
				count = count + 1
			elseif word == "end" then
				ended = tonumber (line:match ("^end (%d+)%s*$"))
				break
			end -- a line of a kind this script does not know: skipped
		end
		if ended ~= count then
			return nil, "the answer of backline send-notes was cut short (no end line, or notes missing)"
		end
		if #tracks == 0 then return nil, "the model sent no tracks" end
		return tracks
	end

	local function midi_track (route)
		if route:isnil () then return nil end
		local track = route:to_track ()
		if track:isnil () then return nil end
		local mt = track:to_midi_track ()
		if mt:isnil () then return nil end
		return mt
	end

	-- the MIDI track for an instrument: one named after it, made if missing. A name taken by
	-- something else (an audio track, a bus, the melody's own track) gets " (Backline)" added.
	local function find_or_make_track (session, name, melody_playlist, log)
		for _, candidate in ipairs ({ name, name .. " (Backline)" }) do
			local route = session:route_by_name (candidate)
			if route:isnil () then
				local list = session:new_midi_track (
					ARDOUR.ChanCount (ARDOUR.DataType ("midi"), 1),
					ARDOUR.ChanCount (ARDOUR.DataType ("audio"), 2),
					true, ARDOUR.PluginInfo (), nil, nil, 1, candidate,
					ARDOUR.PresentationInfo.max_order, ARDOUR.TrackMode.Normal, true)
				if list:empty () then return nil, "Ardour could not make the track " .. candidate .. "." end
				log ("new track " .. list:front ():name ())
				return list:front ()
			end
			local mt = midi_track (route)
			if mt and mt:playlist ():name () ~= melody_playlist then
				log ("reuse track " .. candidate)
				return mt
			end
		end
		return nil, string.format ("The track names %s and %s (Backline) are both taken by tracks Backline cannot use.", name, name)
	end

	-- THE CORE: the accompaniment of `region`, added to `session`. Returns a table of one line
	-- per instrument, or nil and the message for the user. Until the command has answered and
	-- its answer is read, the session is not touched.
	local function accompany (session, region, log)
		log = log or function () end
		local mr = region:to_midiregion ()
		if mr:isnil () then return nil, "The selected region is not a MIDI region." end

		-- 1. the melody: the notes the region plays, in beats from its start, cut to it.
		--    Note times are the source's; region:start () is where the region begins in it.
		local r_start = beats_num (region:start ():beats ())
		local r_len = beats_num (region:length ():beats ())
		local lines = {}
		for n in ARDOUR.LuaAPI.note_list (mr:model ()):iter () do
			local t0 = beats_num (n:time ()) - r_start
			local t1 = math.min (t0 + beats_num (n:length ()), r_len)
			t0 = math.max (t0, 0)
			if t1 - t0 > 0.5 / PPQN then
				lines[#lines + 1] = string.format ("%d %s %s %d", n:note (), decimal (t0), decimal (t1 - t0), n:velocity ())
			end
		end
		if #lines == 0 then return nil, "The selected region has no notes to accompany." end

		-- 2. backline send-notes MELODY-FILE > answer, 2> errors
		local melody, errors = tmpname (), tmpname ()
		local f, ferr = io.open (melody, "w")
		if not f then return nil, "Cannot write a temporary file: " .. tostring (ferr) end
		f:write (table.concat (lines, "\n"), "\n")
		f:close ()
		local args = { quote (param ("backline", "backline")), "send-notes",
		               "--port", quote (param ("port", "11010")), "--seed", quote (param ("seed", "0")),
		               "--length", decimal (r_len) }
		if param ("model", "", true) ~= "" then args[#args + 1] = "--model " .. quote (param ("model", "", true)) end
		if param ("threshold", "", true) ~= "" then args[#args + 1] = "--threshold " .. quote (param ("threshold", "", true)) end
		args[#args + 1] = "-- " .. quote (melody) .. " 2>" .. quote (errors)
		local cmdline = table.concat (args, " ")
		if WINDOWS then cmdline = '"' .. cmdline .. '"' end -- cmd /c drops the outer pair
		log ("run: " .. cmdline)
		local pipe = io.popen (cmdline, "r")
		local out, ok, how, code = "", nil, nil, nil
		if pipe then
			out = pipe:read ("a") or ""
			ok, how, code = pipe:close ()
		end
		local stderr = trim (slurp (errors))
		os.remove (melody)
		os.remove (errors)
		if not ok then
			local msg = stderr ~= "" and stderr or "(it printed nothing on stderr)"
			local hint = ""
			if code == 127 or code == 9009 then
				hint = "\n\nIs the action's backline path right? Run `backline ardour install` and add the action again."
			end
			return nil, string.format ("backline send-notes failed (%s %s):\n\n%s%s", tostring (how or "exit"),
				tostring (code or "?"), msg, hint)
		end
		local tracks, perr = parse_reply (out)
		if not tracks then return nil, perr end

		-- 3. one MIDI track per instrument (making a track is not an undoable step in Ardour),
		--    its program set on the instrument's channel: the track's Program Change
		--    control, saved with the session (not undoable either)
		local melody_playlist = region:playlist ():name ()
		for _, t in ipairs (tracks) do
			local track, terr = find_or_make_track (session, t.name, melody_playlist, log)
			if not track then return nil, terr end
			t.track = track
			local pc = track:to_automatable ():automation_control (
				Evoral.Parameter (ARDOUR.AutomationType.MidiPgmChangeAutomation, t.channel, 0), true)
			if not pc:isnil () then pc:set_value (t.program, PBD.GroupControlDisposition.NoGroup) end
		end

		-- 4. the regions: a fork of the melody region (a new MIDI source of its own, same
		--    position, length and offset) with its notes replaced. MidiModel:apply_command is
		--    its own undo transaction, and Ardour 7 aborts one begun inside another, so the
		--    notes go in first, each instrument one (hidden) history entry ...
		for _, t in ipairs (tracks) do
			local nr = ARDOUR.RegionFactory.clone_region (region, true, true) -- announce, fork
			nr:set_name ("Backline " .. t.name)
			local mm = nr:to_midiregion ():model ()
			local base = beats_num (nr:start ():beats ())
			local cmd = mm:new_note_diff_command ("Backline " .. t.name .. " notes")
			for n in ARDOUR.LuaAPI.note_list (mm):iter () do cmd:remove (n) end
			for _, n in ipairs (t.notes) do
				cmd:add (ARDOUR.LuaAPI.new_noteptr (t.channel, num_beats (base + n.start), num_beats (n.len), n.pitch, n.vel))
			end
			mm:apply_command (session, cmd)
			t.region = nr
		end

		-- 5. ... and what the user sees, one undo step: the regions go onto the playlists,
		--    replacing the ones an earlier run put at the same place
		local pos, len = region:position ():samples (), region:length ():samples ()
		local playlists, order = {}, {}
		for _, t in ipairs (tracks) do
			local pl = t.track:playlist ()
			local key = pl:name ()
			if not playlists[key] then
				local old = {}
				for r in pl:region_list ():iter () do
					if r:name ():find ("^Backline ") and r:position ():samples () == pos and r:length ():samples () == len then
						old[#old + 1] = r
					end
				end
				playlists[key] = { pl = pl, old = old }
				order[#order + 1] = key
			end
			t.replaced = #playlists[key].old
			t.playlist = playlists[key].pl
		end
		session:begin_reversible_command ("Backline: accompany")
		local placed, perr2 = pcall (function ()
			for _, key in ipairs (order) do
				local entry = playlists[key]
				entry.pl:to_stateful ():clear_changes ()
				for _, r in ipairs (entry.old) do entry.pl:remove_region (r) end
			end
			for _, t in ipairs (tracks) do
				t.playlist:add_region (t.region, region:position (), 1, false)
			end
			for _, key in ipairs (order) do
				session:add_stateful_diff_command (playlists[key].pl:to_statefuldestructible ())
			end
		end)
		if not placed then -- never leave Ardour with an open undo transaction
			session:abort_reversible_command ()
			return nil, "Placing the regions failed: " .. tostring (perr2)
		end
		if not session:abort_empty_reversible_command () then
			session:commit_reversible_command (nil)
		end

		local summary = {}
		for _, t in ipairs (tracks) do
			summary[#summary + 1] = string.format ("%s: %d notes, program %d, channel %d%s", t.name, #t.notes,
				t.program, t.channel + 1, t.replaced > 0 and " (replaced the earlier one)" or "")
		end
		return summary
	end

	-- for headless runs (tests/test_ardour.py): hand the core over
	if BACKLINE_EXPORT_CORE then BACKLINE_EXPORT_CORE (accompany) end

	return function ()
		local function say (text, kind)
			LuaDialog.Message (TITLE, text, kind or LuaDialog.MessageType.Error, LuaDialog.ButtonType.Close):run ()
		end
		local regions = {}
		for r in Editor:get_selection ().regions:regionlist ():iter () do
			if not r:to_midiregion ():isnil () then regions[#regions + 1] = r end
		end
		if #regions ~= 1 then
			say (#regions == 0 and "Select a MIDI region (the melody) first."
				or string.format ("Select one MIDI region, not %d.", #regions))
			return
		end
		local ok, res, err = pcall (accompany, Session, regions[1])
		if not ok then
			say ("Backline: the script failed: " .. tostring (res))
		elseif not res then
			say (err)
		end
	end
end
