# libFuzzer targets (tests/fuzz, scripts/fuzz.sh), built only with -DCF_FUZZ=ON and clang: the
# whole build is then instrumented (CF_SAN in the top CMakeLists.txt: -fsanitize=
# fuzzer-no-link,address,undefined) and each target links libFuzzer's main. One ctest per
# target (label fuzz) replays its committed corpus and regression inputs (regress/) once.
if(NOT CF_FUZZ OR NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  return()
endif()
set(CF_FUZZ_FLAGS -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer
                  -fno-sanitize-recover=all)
add_library(cf_fuzz_common STATIC ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_common.c
                                  ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_h5build.c)
target_compile_options(cf_fuzz_common PRIVATE ${CF_WARN} ${CF_SAN})
target_link_libraries(cf_fuzz_common PUBLIC cf_io)
# target -> the smallest layer library it needs
set(CF_FUZZ_TARGETS options:calmflow_lib h5io:calmflow_lib h5ad:cf_io ckpt:calmflow_lib
                    bpe_json:cf_io bpe_gpt2:cf_io)
foreach(pair ${CF_FUZZ_TARGETS})
  string(REPLACE ":" ";" pair "${pair}")
  list(GET pair 0 name)
  list(GET pair 1 lib)
  add_executable(fuzz_${name} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_${name}.c)
  target_compile_options(fuzz_${name} PRIVATE ${CF_WARN} ${CF_FUZZ_FLAGS})
  target_link_options(fuzz_${name} PRIVATE ${CF_FUZZ_FLAGS})
  target_include_directories(fuzz_${name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
  target_link_libraries(fuzz_${name} PRIVATE cf_fuzz_common ${lib})
  file(MAKE_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/regress/${name})
  add_test(NAME fuzz_${name}_corpus
           COMMAND $<TARGET_FILE:fuzz_${name}> -runs=0 -rss_limit_mb=2048
                   ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/${name}
                   ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/regress/${name})
  set_tests_properties(fuzz_${name}_corpus PROPERTIES LABELS fuzz TIMEOUT 600
                       ENVIRONMENT "${CF_TEST_ENV};ASAN_OPTIONS=detect_leaks=1")
endforeach()
