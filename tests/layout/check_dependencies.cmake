# The parts of tern and what each may depend on (docs/architecture.md "Parts and their
# dependencies"): every #include of a tern header in a part's sources, and every include
# directory its CMakeLists.txt names, must stay inside the part or reach an allowed one.
#
#   cmake -DSOURCE_DIR=<tree> -P check_dependencies.cmake
#
# Exits non-zero, listing each offending line, when a part reaches one it may not, or when
# libtern's public header reaches past the values a job sees (the channel's codec is private).
cmake_minimum_required(VERSION 3.25)
if(NOT SOURCE_DIR)
  message(FATAL_ERROR "check_dependencies: give -DSOURCE_DIR=<the source tree>")
endif()

# part -> its folders
set(folders_base base)
set(folders_ipc ipc)
set(folders_migrate migrate)
set(folders_balancer balancer)
set(folders_agent agent)
set(folders_cli cli)
set(parts base ipc migrate balancer agent cli)

# part -> the parts it may include from (itself always)
set(allowed_base "")
set(allowed_ipc base)
set(allowed_migrate base ipc)
set(allowed_balancer base)
set(allowed_agent base ipc migrate balancer)
set(allowed_cli base agent)

# Which part a header belongs to, by its include path.
function(part_of header out)
  set(result "")
  if(header MATCHES "^tern/ipc[./]")
    set(result ipc)
  elseif(header MATCHES "^tern/migrate/")
    set(result migrate)
  elseif(header MATCHES "^tern/balancer/")
    set(result balancer)
  elseif(header MATCHES "^tern/(agent|jobs|http)/")
    set(result agent)
  elseif(header MATCHES "^tern/cli/")
    set(result cli)
  elseif(header MATCHES "^tern/[a-z_]+\\.hpp$")
    set(result base)
  endif()
  set(${out} "${result}" PARENT_SCOPE)
endfunction()

# What the CLI may take from the agent: the API's types (the HTTP client side and tokens),
# and from ipc the cluster CA's certificate issuing (`tern tls`), nothing of the agent's core.
set(cli_agent_headers "^tern/http/(types|tokens|server|responder)\\.hpp$")
set(cli_exceptions "^tern/ipc/(tls_issue|tls_files)\\.hpp$")

set(failures "")
set(checked 0)
foreach(part IN LISTS parts)
  foreach(folder IN LISTS folders_${part})
    file(GLOB_RECURSE sources LIST_DIRECTORIES false
      "${SOURCE_DIR}/${folder}/*.cpp" "${SOURCE_DIR}/${folder}/*.hpp"
      "${SOURCE_DIR}/${folder}/*.h" "${SOURCE_DIR}/${folder}/*.c")
    foreach(source IN LISTS sources)
      file(STRINGS "${source}" includes REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]tern/")
      foreach(line IN LISTS includes)
        math(EXPR checked "${checked} + 1")
        string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*[<\"]([^>\"]+)[>\"].*" "\\1" header "${line}")
        part_of("${header}" target)
        if(target STREQUAL "" OR target STREQUAL part)
          continue()
        endif()
        if(part STREQUAL "cli")
          if(header MATCHES "${cli_exceptions}")
            continue()
          endif()
          if(target STREQUAL "agent" AND NOT header MATCHES "${cli_agent_headers}")
            file(RELATIVE_PATH rel "${SOURCE_DIR}" "${source}")
            list(APPEND failures "${rel}: cli may use the agent's API types only, not ${header}")
            continue()
          endif()
        endif()
        if(NOT target IN_LIST allowed_${part})
          file(RELATIVE_PATH rel "${SOURCE_DIR}" "${source}")
          list(APPEND failures "${rel}: ${part} may not include ${header} (part ${target})")
        endif()
      endforeach()
    endforeach()

    # No raw include path into another part: reach it by linking its target.
    file(GLOB_RECURSE lists "${SOURCE_DIR}/${folder}/CMakeLists.txt")
    foreach(list_file IN LISTS lists)
      file(STRINGS "${list_file}" dirs REGEX "(SOURCE_DIR|source_dir)}/[a-z]+/")
      foreach(line IN LISTS dirs)
        string(REGEX MATCHALL "(SOURCE_DIR|source_dir)}/[a-z]+/" reached "${line}")
        foreach(one IN LISTS reached)
          string(REGEX REPLACE ".*}/([a-z]+)/" "\\1" other "${one}")
          if(NOT other STREQUAL folder AND other IN_LIST parts)
            file(RELATIVE_PATH rel "${SOURCE_DIR}" "${list_file}")
            list(APPEND failures "${rel}: names a path inside ${other}/ (${line}), link its target")
          endif()
        endforeach()
      endforeach()
    endforeach()
  endforeach()
endforeach()

# libtern's public headers (what the package installs for jobs) show the values a job sees and
# nothing of the channel's codec: they may include, of tern's headers, only these.
set(public_allowed "^tern/(expected\\.hpp|ipc\\.h|ipc/job_message\\.hpp)$")
foreach(public IN ITEMS ipc/libtern/include/tern/ipc.hpp ipc/libtern/include/tern/ipc.h
                        ipc/include/tern/ipc/job_message.hpp)
  if(NOT EXISTS "${SOURCE_DIR}/${public}")
    list(APPEND failures "${public}: libtern's public header is missing")
    continue()
  endif()
  file(STRINGS "${SOURCE_DIR}/${public}" includes REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]tern/")
  foreach(line IN LISTS includes)
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*[<\"]([^>\"]+)[>\"].*" "\\1" header "${line}")
    if(NOT header MATCHES "${public_allowed}")
      list(APPEND failures "${public}: a public header of libtern may not include ${header}")
    endif()
  endforeach()
endforeach()

if(checked EQUAL 0)
  message(FATAL_ERROR "check_dependencies: no #include of a tern header found under ${SOURCE_DIR}")
endif()
if(failures)
  list(JOIN failures "\n  " text)
  message(FATAL_ERROR "dependencies between parts that are not allowed:\n  ${text}")
endif()
message(STATUS "check_dependencies: ${checked} includes of tern headers, all allowed")
