cf_script_test(style_clang_format test_format.sh fast)
